//! Where a process's connection goes, when the kernel could not say: asked of the socket
//! through a copy of its fd (`pidfd_getfd`, Linux 5.6), a few syscalls, where the
//! namespace's TCP table in /proc, the fallback, costs a line per socket on the host, and a
//! burst of connections to resolve (a server accepting without asking for the peer's
//! address, as libuv does) would read it once per connection.

use std::{
    fs, io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use super::{procfs, records::unmapped};

/// Set once copying fds was refused for good (no such syscall, not allowed): the fallback
/// then costs no failing syscalls, nor a security module's denial in the log, per lookup.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Where a process's fd goes, as far as userspace can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP connection to this address.
    Tcp(SocketAddr),
    /// A socket, but not TCP (a unix socket, UDP...).
    NotTcp,
    /// The fd is closed, or no longer a socket, or its process is gone: too late to tell.
    Gone,
}

/// Where `fd` of `pid` goes. Asks the socket itself; where that cannot be done, looks it up
/// in the namespace's TCP table.
#[must_use]
pub fn resolve(pid: u32, fd: u32) -> Peer {
    match ask(pid, fd) {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!("asking fd {fd} of pid {pid} for its peer: {e}; reading /proc");
            let Some(inode) = procfs::socket_inode(pid, fd) else {
                return Peer::Gone;
            };
            procfs::tcp_sockets(pid)
                .get(&inode)
                .map_or(Peer::NotTcp, |s| Peer::Tcp(s.remote))
        }
    }
}

/// Where `fd` of `pid` goes, asked of the socket. `Err`: cannot tell this way (not connected yet, older kernel,
/// not allowed, or copying would change the socket).
pub fn ask(pid: u32, fd: u32) -> io::Result<Peer> {
    if REFUSED.load(Ordering::Relaxed) || !copying_leaves_sockets_alone() {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    let gone = |e: io::Error| match e.raw_os_error() {
        // The connection asked about was a socket: an fd that is not one now was reused.
        Some(libc::ESRCH | libc::EBADF | libc::ENOTSOCK) => Ok(Peer::Gone),
        Some(libc::ENOSYS | libc::EPERM | libc::EACCES) => {
            if !REFUSED.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    "cannot copy other processes' sockets ({e}): their peers are looked up in /proc"
                );
            }
            Err(e)
        }
        _ => Err(e),
    };
    let no = |errno| move || io::Error::from_raw_os_error(errno);
    let pid = libc::c_int::try_from(pid)
        .ok()
        .ok_or_else(no(libc::ESRCH))?;
    let fd = libc::c_int::try_from(fd).ok().ok_or_else(no(libc::EBADF))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = match owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) }) {
        Ok(f) => f,
        Err(e) => return gone(e),
    };
    // SAFETY: pidfd_getfd takes a pidfd, a target fd and flags and returns a new fd or -1.
    let copy =
        match owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) }) {
            Ok(f) => f,
            Err(e) => return gone(e),
        };
    match sock_int(&copy, libc::SO_PROTOCOL) {
        Ok(p) if p == libc::IPPROTO_TCP => {}
        Ok(_) => return Ok(Peer::NotTcp),
        Err(e) => return gone(e),
    }
    // A TCP socket, as the kernel just said. An IPv4 peer of a dual-stack socket is named as
    // the kernel's records and /proc name it: IPv4.
    let peer = std::net::TcpStream::from(copy).peer_addr()?;
    Ok(Peer::Tcp(SocketAddr::new(
        match peer.ip() {
            IpAddr::V6(v6) => unmapped(v6),
            v4 => v4,
        },
        peer.port(),
    )))
}

/// Whether receiving a copy of a socket's fd leaves the socket as it was. It does not where
/// cgroup v1's `net_cls` or `net_prio` controller is mounted: the kernel moves a received
/// socket into the receiver's class and priority map (`__receive_sock`), which would change
/// how the host shapes or filters the application's traffic. Where neither is mounted (a
/// cgroup v2 host, or v1 without them), every process and socket has the same class.
fn copying_leaves_sockets_alone() -> bool {
    static ALONE: OnceLock<bool> = OnceLock::new();
    *ALONE.get_or_init(|| {
        let alone =
            fs::read_to_string("/proc/cgroups").is_ok_and(|text| net_controllers_unmounted(&text));
        if !alone {
            tracing::info!(
                "net_cls or net_prio (cgroup v1) is mounted, or /proc/cgroups unreadable: \
                 sockets' peers are looked up in /proc, not asked of the sockets"
            );
        }
        alone
    })
}

/// Whether `/proc/cgroups` says neither `net_cls` nor `net_prio` has a v1 hierarchy.
fn net_controllers_unmounted(cgroups: &str) -> bool {
    cgroups
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            Some((fields.next()?, fields.next()?))
        })
        .filter(|(name, _)| matches!(*name, "net_cls" | "net_prio"))
        .all(|(_, hierarchy)| hierarchy == "0")
}

/// An fd returned by a raw syscall, or the error it set.
fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = libc::c_int::try_from(ret)
        .ok()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall just returned this fd to us, open and owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An int-valued `SOL_SOCKET` option of `sock`.
fn sock_int(sock: &OwnedFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(f: &dyn std::os::fd::AsRawFd) -> u32 {
        u32::try_from(f.as_raw_fd()).expect("fd")
    }

    #[test]
    fn a_socket_is_asked_where_it_goes() {
        let me = std::process::id();
        for ip in ["127.0.0.1", "::1"] {
            let listener = std::net::TcpListener::bind((ip, 0)).expect("bind");
            let addr = listener.local_addr().expect("addr");
            let client = std::net::TcpStream::connect(addr).expect("connect");
            assert_eq!(ask(me, fd(&client)).expect("asked"), Peer::Tcp(addr));
            // Listening, not connected: this way cannot tell.
            assert!(ask(me, fd(&listener)).is_err());
        }
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        assert_eq!(ask(me, fd(&udp)).expect("asked"), Peer::NotTcp);
        // Not a socket (any more): the socket asked about is gone.
        let file = std::fs::File::open("/proc/self/stat").expect("file");
        assert_eq!(ask(me, fd(&file)).expect("asked"), Peer::Gone);
        // Far above any fd a test process has open (others run in parallel and reuse fds).
        assert_eq!(ask(me, 1_000_000).expect("asked"), Peer::Gone);
    }

    #[test]
    fn an_ipv4_peer_of_a_dual_stack_socket_is_ipv4() {
        let Ok(listener) = std::net::TcpListener::bind("[::]:0") else {
            println!("skipped: no IPv6 on this host");
            return;
        };
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let want = client.local_addr().expect("local");
        assert!(want.is_ipv4());
        assert_eq!(
            ask(std::process::id(), fd(&server)).expect("asked"),
            Peer::Tcp(want)
        );
    }

    #[test]
    fn only_unmounted_net_controllers_leave_sockets_alone() {
        let v2 = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t0\t1\t1\nnet_cls\t0\t1\t1\nnet_prio\t0\t1\t1\n";
        assert!(net_controllers_unmounted(v2));
        let v1 = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t2\t80\t1\nnet_cls\t5\t3\t1\nnet_prio\t5\t3\t1\n";
        assert!(!net_controllers_unmounted(v1));
        // A kernel without them.
        assert!(net_controllers_unmounted(
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
        ));
    }
}
