//! Connections that were open before the agent started, found in /proc, so that their calls
//! are seen too (from the next message on).

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use common::{ConnState, FdKey, budget, fd_kind};

use super::{
    procfs::{self, TCP_ESTABLISHED, TCP_LISTEN, TcpSocket},
    records::{Opened, Role},
};

/// A socket found open: a connection (with what userspace needs to follow it) or a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub key: FdKey,
    pub state: ConnState,
    /// `None` for a listening socket.
    pub opened: Option<Opened>,
}

/// Every TCP socket of every process but `self_pid`. Connection ids come from `next_id`
/// (userspace ids have `common::CONN_ID_USER_BIT` set, so they never meet the kernel's).
#[must_use]
pub fn scan(self_pid: u32, next_id: &mut u64) -> Vec<Found> {
    let mut tables: HashMap<u64, (HashMap<u64, TcpSocket>, HashSet<u16>)> = HashMap::new();
    let mut found = Vec::new();
    for pid in procfs::pids() {
        if pid == self_pid {
            continue;
        }
        let sockets = procfs::socket_fds(pid);
        if sockets.is_empty() {
            continue;
        }
        let Some(ns) = procfs::net_ns(pid) else {
            continue;
        };
        let (table, listening) = tables.entry(ns).or_insert_with(|| {
            let table = procfs::tcp_sockets(pid);
            let listening = table
                .values()
                .filter(|s| s.state == TCP_LISTEN)
                .map(|s| s.local.port())
                .collect();
            (table, listening)
        });
        let comm = procfs::comm(pid).unwrap_or_default();
        for (fd, inode) in sockets {
            let Some(sock) = table.get(&inode) else {
                continue;
            };
            let key = FdKey { tgid: pid, fd };
            match sock.state {
                TCP_LISTEN => found.push(Found {
                    key,
                    state: ConnState::socket(fd_kind::TCP_SOCKET),
                    opened: None,
                }),
                TCP_ESTABLISHED => {
                    *next_id += 1;
                    let conn_id = common::CONN_ID_USER_BIT | *next_id;
                    let role = if listening.contains(&sock.local.port()) {
                        Role::Server
                    } else {
                        Role::Client
                    };
                    found.push(Found {
                        key,
                        state: ConnState::new_conn(conn_id, budget::MIDSTREAM),
                        opened: Some(Opened {
                            conn_id,
                            pid,
                            fd,
                            ts: 0,
                            role,
                            remote: Some(sock.remote),
                            comm: comm.clone(),
                            verified: true,
                            fresh: false,
                        }),
                    });
                }
                _ => {}
            }
        }
    }
    found
}

/// Where `fd` of `pid` goes, if it is a TCP socket: `None` means not TCP (or gone). Asks the
/// socket itself; where that cannot be done, looks it up in the namespace's TCP table.
#[must_use]
pub fn resolve(pid: u32, fd: u32) -> Option<SocketAddr> {
    match ask_socket(pid, fd) {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!("asking fd {fd} of pid {pid} for its peer: {e}; reading /proc");
            let inode = procfs::socket_inode(pid, fd)?;
            procfs::tcp_sockets(pid).get(&inode).map(|s| s.remote)
        }
    }
}

/// Where `fd` of `pid` goes, from a copy of the fd (`pidfd_getfd`, Linux 5.6): a few
/// syscalls, where the TCP table costs a line per socket in the namespace, and a burst of
/// connections to resolve (a server accepting without asking for the peer's address, as
/// libuv does) would read it once per connection. `Ok(None)`: not a TCP socket, or gone.
/// `Err`: cannot tell this way (older kernel, not allowed, not connected yet).
fn ask_socket(pid: u32, fd: u32) -> io::Result<Option<SocketAddr>> {
    let gone = |e: io::Error| match e.raw_os_error() {
        Some(libc::ESRCH | libc::EBADF | libc::ENOTSOCK) => Ok(None),
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
        Ok(_) => return Ok(None),
        Err(e) => return gone(e),
    }
    peer_name(&copy).map(Some)
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

/// The peer of a connected IPv4 or IPv6 socket.
fn peer_name(sock: &OwnedFd) -> io::Result<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` and `len` are valid for writes of the sizes given.
    if unsafe { libc::getpeername(sock.as_raw_fd(), (&raw mut ss).cast(), &raw mut len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: libc::sockaddr_in = unsafe { *(&raw const ss).cast() };
            Ok(SocketAddr::from((
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { *(&raw const ss).cast() };
            Ok(SocketAddr::from((
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
            )))
        }
        f => Err(io::Error::other(format!("address family {f}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_connection_of_this_test() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let mut next = 0;
        // The test process is not excluded here (self_pid 0), so its own sockets are found.
        let found = scan(0, &mut next);
        let me = std::process::id();
        let mine: Vec<_> = found.iter().filter(|f| f.key.tgid == me).collect();
        let client_side = mine
            .iter()
            .filter_map(|f| f.opened.as_ref())
            .find(|o| o.remote == Some(addr))
            .expect("the client connection is found");
        assert_eq!(client_side.role, Role::Client);
        assert!(client_side.conn_id & common::CONN_ID_USER_BIT != 0);
        assert!(
            mine.iter()
                .any(|f| f.opened.as_ref().is_some_and(|o| o.role == Role::Server))
        );
        assert!(
            mine.iter().any(|f| f.opened.is_none()),
            "the listener is found"
        );
        let local = client.local_addr().expect("local");
        let fd = mine
            .iter()
            .find(|f| f.opened.as_ref().is_some_and(|o| o.remote == Some(local)))
            .map(|f| f.key.fd)
            .expect("server side");
        assert_eq!(resolve(me, fd), Some(local));
    }

    #[test]
    fn a_socket_is_asked_where_it_goes() {
        let me = std::process::id();
        let fd = |f: &dyn std::os::fd::AsRawFd| u32::try_from(f.as_raw_fd()).expect("fd");
        for ip in ["127.0.0.1", "::1"] {
            let listener = std::net::TcpListener::bind((ip, 0)).expect("bind");
            let addr = listener.local_addr().expect("addr");
            let client = std::net::TcpStream::connect(addr).expect("connect");
            assert_eq!(ask_socket(me, fd(&client)).expect("asked"), Some(addr));
            // Listening, not connected: this way cannot tell.
            assert!(ask_socket(me, fd(&listener)).is_err());
        }
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        assert_eq!(ask_socket(me, fd(&udp)).expect("asked"), None);
        let file = std::fs::File::open("/proc/self/stat").expect("file");
        assert_eq!(ask_socket(me, fd(&file)).expect("asked"), None);
        // Far above any fd a test process has open (others run in parallel and reuse fds).
        let gone = 1_000_000;
        assert_eq!(ask_socket(me, gone).expect("asked"), None);
        assert_eq!(resolve(me, gone), None);
    }
}
