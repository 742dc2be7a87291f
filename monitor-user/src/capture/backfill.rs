//! Connections that were open before the agent started, found in /proc, so that their calls
//! are seen too (from the next message on).

use std::collections::{HashMap, HashSet};

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

#[cfg(test)]
mod tests {
    use super::{super::peer::Peer, *};

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
        assert_eq!(super::super::peer::resolve(me, fd), Peer::Tcp(local));
    }
}
