//! Connection table: follows each connection's byte streams (positions, gaps, TLS or not),
//! feeds them to an HTTP session, and hands finished exchanges on with the connection's
//! identity (process, peer, direction). Memory is bounded: connections in number, and the
//! bytes all of them buffer together; what goes to stay within is counted.

mod held;
mod sample;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use common::stream_index;

use self::{held::Held, sample::Sampler};
use crate::{
    capture::{
        peer::Peer,
        records::{Data, Opened, Role},
    },
    http::{Direction, Exchange, Limits, ParseError, Session, SessionEvent},
};

/// Who and where a connection is: what every call on it shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub conn_id: u64,
    pub pid: u32,
    pub fd: u32,
    pub comm: String,
    pub role: Role,
    pub remote: Option<SocketAddr>,
    /// TLS library whose plaintext this connection's calls came from.
    pub tls_lib: Option<&'static str>,
    /// Whether its calls are analysed; false when sampled out under load (they are then
    /// parsed, without bodies, only to be counted).
    pub sampled: bool,
}

/// What the table produces.
#[derive(Debug)]
pub enum ConnEvent {
    /// A finished exchange and the connection it happened on.
    Exchange(Arc<ConnInfo>, Box<Exchange>),
    /// Bytes that could not be parsed.
    ParseError(ParseError),
    /// A response no request waited for.
    UnmatchedResponse,
    /// The kernel should stop forwarding this connection's bytes (upgraded, or not HTTP).
    Mute { pid: u32, fd: u32, conn_id: u64 },
    /// The kernel could not tell the socket is TCP, or where it goes: ask the socket.
    Resolve { pid: u32, fd: u32, conn_id: u64 },
    /// A connection was dropped to stay within the table's size or its memory budget (its
    /// requests in progress are reported, unanswered, before this).
    Evicted,
    /// A connection turned out not to be a TCP socket (or was gone before userspace could
    /// tell) and was dropped with `calls` requests in progress, not reported.
    Dropped { calls: usize },
}

/// Limits and timeouts of the table.
#[derive(Clone, Copy, Debug)]
pub struct TableConfig {
    pub http: Limits,
    /// Connections followed at most; beyond, the least recently active are dropped
    /// ([`EVICT_SHARE`] of them at once).
    pub max_connections: usize,
    /// Reassembly bytes all connections may hold together (see [`ConnTable::memory`]);
    /// beyond, the least recently active are dropped at the next [`ConnTable::tick`].
    pub max_buffered: usize,
    /// A request unanswered for this long (ns) is reported without a response.
    pub response_timeout_ns: u64,
}

impl TableConfig {
    /// What `[capture]` describes.
    #[must_use]
    pub fn from_config(c: &crate::config::CaptureConfig) -> Self {
        Self {
            http: Limits {
                max_head: c.max_header_bytes,
                body: c.body_limit,
            },
            max_connections: c.max_connections,
            max_buffered: c.max_buffered_bytes,
            response_timeout_ns: u64::try_from(c.response_timeout.as_nanos()).unwrap_or(u64::MAX),
        }
    }
}

impl Default for TableConfig {
    fn default() -> Self {
        Self::from_config(&crate::config::CaptureConfig::default())
    }
}

#[derive(Debug)]
struct Conn {
    info: Arc<ConnInfo>,
    fresh: bool,
    session: Option<Session>,
    /// Next expected position per `common::stream_index`; `None` until the first record.
    expected: [Option<u64>; 4],
    /// Whether the session is fed TLS plaintext (else the socket's bytes).
    tls: Option<bool>,
    last_ts: u64,
    muted: bool,
    /// Its calls, while userspace finds out where it goes.
    held: Held,
}

impl Conn {
    /// Approximate bytes this connection holds: its entry, its session's buffers and the
    /// calls it holds.
    fn memory(&self) -> usize {
        256 + self.session.as_ref().map_or(0, Session::memory) + self.held.memory()
    }

    /// Hands on the calls held while resolving, with what is known now.
    fn release(&mut self, out: &mut Vec<ConnEvent>) {
        self.held.release(&self.info, out);
    }
}

/// At the table's cap, one in this many connections is dropped at once (the least recently
/// active): 1,024 at the default 65,536.
const EVICT_SHARE: usize = 64;

/// All connections being followed.
#[derive(Debug)]
pub struct ConnTable {
    config: TableConfig,
    conns: HashMap<u64, Conn>,
    /// The connection on each (pid, fd): one at most, as in the process. Ordered so that a
    /// process's connections are one range (its exit), and an fd reused without a close we
    /// saw is one lookup (a process with 10,000 connections opening one more must not look
    /// at the other 10,000).
    by_fd: BTreeMap<(u32, u32), u64>,
    /// Whether message bodies are kept for analysis (false while shedding load).
    keep_bodies: bool,
    /// Which new connections are analysed (all unless shedding load).
    sampler: Sampler,
    /// [`Self::memory`] as of the last [`Self::tick`].
    buffered: usize,
}

fn lib_name(lib: u8) -> &'static str {
    match lib {
        common::tls_lib::OPENSSL => "openssl",
        _ => "unknown",
    }
}

impl ConnTable {
    #[must_use]
    pub fn new(config: TableConfig) -> Self {
        Self {
            config,
            conns: HashMap::new(),
            by_fd: BTreeMap::new(),
            keep_bodies: true,
            sampler: Sampler::new(),
            buffered: 0,
        }
    }

    /// Sheds load (see `crate::shed`): bodies kept or not (heads only, sizes still counted),
    /// from the next bytes on; and one in `sample_every` new connections per process
    /// analysed, the others parsed without bodies to be counted ([`ConnInfo::sampled`]).
    pub fn set_shedding(&mut self, keep_bodies: bool, sample_every: u32) {
        self.keep_bodies = keep_bodies;
        let eased = sample_every < self.sampler.every();
        self.sampler.set_every(sample_every);
        if eased {
            // Connections left out take their turn again at the new rate: else a keep-alive
            // connection sampled out in a burst would go unanalysed for as long as it lives.
            for conn in self.conns.values_mut() {
                if !conn.info.sampled && self.sampler.admit(conn.info.pid) {
                    Arc::make_mut(&mut conn.info).sampled = true;
                }
            }
        }
    }

    /// Connections followed now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Approximate bytes held by all sessions (a pass over the table).
    #[must_use]
    pub fn memory(&self) -> usize {
        self.conns.values().map(Conn::memory).sum()
    }

    /// [`Self::memory`] as the last [`Self::tick`] left it, without a pass over the table.
    #[must_use]
    pub const fn buffered(&self) -> usize {
        self.buffered
    }

    /// A connection starts (kernel record, or found open at start).
    pub fn open(&mut self, o: Opened, out: &mut Vec<ConnEvent>) {
        // The fd may have been reused without a close we saw: end the old connection.
        if let Some(&stale) = self.by_fd.get(&(o.pid, o.fd)) {
            self.close(stale, None, out);
        }
        if self.conns.len() >= self.config.max_connections {
            self.evict_oldest(out);
        }
        let resolving = (!o.verified || o.remote.is_none()).then_some(o.ts);
        if resolving.is_some() {
            out.push(ConnEvent::Resolve {
                pid: o.pid,
                fd: o.fd,
                conn_id: o.conn_id,
            });
        }
        let info = ConnInfo {
            conn_id: o.conn_id,
            pid: o.pid,
            fd: o.fd,
            comm: o.comm,
            role: o.role,
            remote: o.remote,
            tls_lib: None,
            sampled: self.sampler.admit(o.pid),
        };
        self.by_fd.insert((o.pid, o.fd), o.conn_id);
        self.conns.insert(
            o.conn_id,
            Conn {
                info: Arc::new(info),
                fresh: o.fresh,
                session: None,
                expected: [None; 4],
                tls: None,
                last_ts: o.ts,
                muted: false,
                held: Held::new(resolving),
            },
        );
    }

    /// What userspace found of a connection the kernel could not place.
    pub fn resolved(&mut self, conn_id: u64, peer: Peer, out: &mut Vec<ConnEvent>) {
        match peer {
            // Too late to tell (gone): what it holds goes on without a peer, and it is still
            // followed (its close may not have been read yet).
            Peer::Tcp(_) | Peer::Gone => {
                if let Some(c) = self.conns.get_mut(&conn_id) {
                    if let Peer::Tcp(addr) = peer {
                        Arc::make_mut(&mut c.info).remote = Some(addr);
                    }
                    c.release(out);
                }
            }
            Peer::NotTcp => {
                let Some(c) = self.conns.remove(&conn_id) else {
                    return;
                };
                self.unindex(&c.info);
                // Not a call to anyone we can name: its calls held or in progress are not
                // reported, but counted.
                let calls = c.held.len() + c.session.as_ref().map_or(0, Session::pending);
                if calls > 0 {
                    out.push(ConnEvent::Dropped { calls });
                }
            }
        }
    }

    /// Bytes on a connection.
    pub fn data(&mut self, d: &Data<'_>, out: &mut Vec<ConnEvent>) {
        // One lookup for a connection already followed, as nearly every record's is.
        let conn = match self.conns.get_mut(&d.conn_id) {
            Some(conn) => conn,
            None => {
                // Its open record was lost (ring buffer full): follow it from here, mid-stream.
                self.open(
                    Opened {
                        conn_id: d.conn_id,
                        pid: d.pid,
                        fd: d.fd,
                        ts: d.ts,
                        role: Role::Unknown,
                        remote: None,
                        comm: crate::capture::procfs::comm(d.pid).unwrap_or_default(),
                        verified: false,
                        fresh: false,
                    },
                    out,
                );
                let Some(conn) = self.conns.get_mut(&d.conn_id) else {
                    return;
                };
                conn
            }
        };
        conn.last_ts = d.ts;
        if conn.muted {
            return;
        }
        match conn.tls {
            // Plaintext from the TLS library wins over the socket's (cipher)bytes.
            Some(true) if !d.tls => return,
            Some(false) if d.tls => {
                conn.session = None;
                conn.tls = Some(true);
            }
            None => conn.tls = Some(d.tls),
            _ => {}
        }
        if d.tls && conn.info.tls_lib.is_none() {
            Arc::make_mut(&mut conn.info).tls_lib = Some(lib_name(d.tls_lib));
        }
        if conn.info.role == Role::Unknown {
            match guess_role(d) {
                Some(role) => Arc::make_mut(&mut conn.info).role = role,
                None => {
                    // Mid-message bytes of a connection we joined late: wait for a start.
                    conn.expected[stream_index(d.tls, d.read)] =
                        Some(d.op_end.max(d.seq + d.payload.len() as u64));
                    return;
                }
            }
        }
        let direction = direction_of(conn.info.role, d.read);
        let limits = self.config.http;
        let fresh = conn.fresh;
        let session = conn
            .session
            .get_or_insert_with(|| Session::new(limits, fresh, fresh));
        session.set_shed_bodies(!(self.keep_bodies && conn.info.sampled));
        let idx = stream_index(d.tls, d.read);
        let mut payload = d.payload;
        match conn.expected[idx] {
            None if d.seq > 0 => session.join_mid_stream(direction),
            Some(e) if d.seq > e => session.gap(direction, d.seq - e, d.ts),
            Some(e) if d.seq < e => {
                // Overlaps what was already fed: keep only the new part.
                let dup = usize::try_from(e - d.seq)
                    .unwrap_or(usize::MAX)
                    .min(payload.len());
                payload = &payload[dup..];
            }
            _ => {}
        }
        session.push(direction, payload, d.ts);
        let mut next = d.seq + d.payload.len() as u64;
        if d.last && d.op_end > next {
            session.gap(direction, d.op_end - next, d.ts);
            next = d.op_end;
        }
        conn.expected[idx] = Some(conn.expected[idx].map_or(next, |e| e.max(next)));
        Self::drain(conn, out);
    }

    /// A connection closed; `seq` holds the kernel's final stream positions if known.
    pub fn close(&mut self, conn_id: u64, seq: Option<[u64; 4]>, out: &mut Vec<ConnEvent>) {
        let Some(mut conn) = self.conns.remove(&conn_id) else {
            return;
        };
        self.unindex(&conn.info);
        if let (Some(session), Some(seq), Some(tls)) = (conn.session.as_mut(), seq, conn.tls) {
            for read in [false, true] {
                let idx = stream_index(tls, read);
                if let Some(e) = conn.expected[idx]
                    && seq[idx] > e
                {
                    session.gap(
                        direction_of(conn.info.role, read),
                        seq[idx] - e,
                        conn.last_ts,
                    );
                }
            }
        }
        if let Some(session) = conn.session.as_mut() {
            session.close();
        }
        Self::drain(&mut conn, out);
        // Gone before userspace could say where it went: the answer will find nothing to
        // give its peer to, so what it held goes on without one.
        conn.release(out);
    }

    /// The fds of `pid`'s connections.
    #[must_use]
    pub fn fds_of(&self, pid: u32) -> Vec<u32> {
        self.of_pid(pid).map(|((_, fd), _)| *fd).collect()
    }

    /// `pid`'s entries in [`Self::by_fd`].
    fn of_pid(&self, pid: u32) -> impl Iterator<Item = (&(u32, u32), &u64)> {
        self.by_fd.range((pid, 0)..=(pid, u32::MAX))
    }

    /// The process exited: all its connections are over.
    pub fn exit(&mut self, pid: u32, out: &mut Vec<ConnEvent>) {
        self.sampler.forget(pid);
        let ids: Vec<u64> = self.of_pid(pid).map(|(_, id)| *id).collect();
        for id in ids {
            self.close(id, None, out);
        }
    }

    /// Periodic work at capture time `now`: give up on requests unanswered for too long,
    /// and drop the least recently active connections while buffers exceed their budget.
    pub fn tick(&mut self, now: u64, out: &mut Vec<ConnEvent>) {
        let deadline = now.saturating_sub(self.config.response_timeout_ns);
        for conn in self.conns.values_mut() {
            if let Some(session) = conn.session.as_mut()
                && session.pending() > 0
            {
                session.expire(deadline);
                Self::drain(conn, out);
            }
            if conn.held.overdue(now) {
                conn.release(out);
            }
        }
        self.buffered = self.enforce_budget(out);
    }

    /// Evicts the least recently active connections until [`Self::memory`] is within
    /// `max_buffered`; returns what is held then. Checked per tick, not per record: the sum
    /// is a pass over the table, and a tick's worth of records can only add so much.
    fn enforce_budget(&mut self, out: &mut Vec<ConnEvent>) -> usize {
        let mut used = self.memory();
        if used <= self.config.max_buffered {
            return used;
        }
        let mut by_age: Vec<(u64, u64, usize)> = self
            .conns
            .iter()
            .map(|(id, c)| (c.last_ts, *id, c.memory()))
            .collect();
        by_age.sort_unstable();
        for (_, id, held) in by_age {
            if used <= self.config.max_buffered {
                break;
            }
            self.close(id, None, out);
            out.push(ConnEvent::Evicted);
            used = used.saturating_sub(held);
        }
        used
    }

    /// Ends every connection (the agent is stopping).
    pub fn close_all(&mut self, out: &mut Vec<ConnEvent>) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id, None, out);
        }
    }

    fn drain(conn: &mut Conn, out: &mut Vec<ConnEvent>) {
        let Some(session) = conn.session.as_mut() else {
            return;
        };
        for event in session.drain() {
            match event {
                SessionEvent::Exchange(x) => conn.held.pass(&conn.info, x, out),
                SessionEvent::Error(_, e) => out.push(ConnEvent::ParseError(e)),
                SessionEvent::UnmatchedResponse => out.push(ConnEvent::UnmatchedResponse),
                SessionEvent::Upgraded => {
                    conn.muted = true;
                    out.push(ConnEvent::Mute {
                        pid: conn.info.pid,
                        fd: conn.info.fd,
                        conn_id: conn.info.conn_id,
                    });
                }
            }
        }
    }

    /// Drops the least recently active [`EVICT_SHARE`] of the table (one at least): finding
    /// the oldest is a pass over the table, which a flood of new connections at the cap
    /// would otherwise pay on every one of them.
    fn evict_oldest(&mut self, out: &mut Vec<ConnEvent>) {
        let n = (self.config.max_connections / EVICT_SHARE).max(1);
        let by_age = self.conns.iter().map(|(id, c)| (c.last_ts, *id)).collect();
        for id in crate::evict::least_recent(by_age, n) {
            self.close(id, None, out);
            out.push(ConnEvent::Evicted);
        }
    }

    /// Removes a connection leaving the table from [`Self::by_fd`].
    fn unindex(&mut self, info: &ConnInfo) {
        let key = (info.pid, info.fd);
        if self.by_fd.get(&key) == Some(&info.conn_id) {
            self.by_fd.remove(&key);
        }
    }
}

/// Requests flow from client to server: a client writes them, a server reads them.
fn direction_of(role: Role, read: bool) -> Direction {
    match (role, read) {
        (Role::Server, true) | (Role::Client | Role::Unknown, false) => Direction::Requests,
        _ => Direction::Responses,
    }
}

/// The role of a process on a connection joined late, from the first bytes it moves.
fn guess_role(d: &Data<'_>) -> Option<Role> {
    let p = d.payload;
    let response = p.starts_with(b"HTTP/1.");
    let mut peek = [0u8; common::classify::PEEK_LEN];
    let n = p.len().min(peek.len());
    peek[..n].copy_from_slice(&p[..n]);
    let request = !response && common::classify::classify(&peek, p.len()) == common::proto::HTTP;
    match (d.read, request, response) {
        (false, true, _) | (true, _, true) => Some(Role::Client),
        (true, true, _) | (false, _, true) => Some(Role::Server),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{
        held::{MAX_HELD, MAX_HOLD_NS},
        *,
    };
    use crate::http::StartLine;

    fn opened(conn_id: u64, role: Role) -> Opened {
        Opened {
            conn_id,
            pid: 10,
            fd: 5,
            ts: 0,
            role,
            remote: Some("198.51.100.10:443".parse().expect("addr")),
            comm: "curl".into(),
            verified: true,
            fresh: true,
        }
    }

    fn data(conn_id: u64, read: bool, seq: u64, payload: &[u8]) -> Data<'_> {
        Data {
            conn_id,
            pid: 10,
            fd: 5,
            ts: seq,
            seq,
            op_end: seq + payload.len() as u64,
            read,
            tls: false,
            last: true,
            tls_lib: 0,
            payload,
        }
    }

    /// A client connection of the same process on its own descriptor, `fd`.
    fn opened_on(conn_id: u64, fd: u32) -> Opened {
        Opened {
            fd,
            ..opened(conn_id, Role::Client)
        }
    }

    /// [`data`] on descriptor `fd`.
    fn data_on(conn_id: u64, fd: u32, read: bool, seq: u64, payload: &[u8]) -> Data<'_> {
        Data {
            fd,
            ..data(conn_id, read, seq, payload)
        }
    }

    /// What `f` makes of each exchange in `out`.
    fn each_exchange<T>(out: &[ConnEvent], f: impl Fn(&ConnInfo, &Exchange) -> T) -> Vec<T> {
        out.iter()
            .filter_map(|e| match e {
                ConnEvent::Exchange(info, x) => Some(f(info, x)),
                _ => None,
            })
            .collect()
    }

    /// Each exchange as (request method, response status, response body size).
    fn exchanges(out: &[ConnEvent]) -> Vec<(String, Option<u16>, u64)> {
        each_exchange(out, |_, x| {
            (
                x.request.head.method().unwrap_or_default().to_owned(),
                x.response.as_ref().and_then(|r| r.head.status()),
                x.response.as_ref().map_or(0, |r| r.body.size),
            )
        })
    }

    #[test]
    fn client_and_server_roles_map_directions() {
        let mut t = ConnTable::new(TableConfig::default());
        let mut out = Vec::new();
        t.open(opened(1, Role::Client), &mut out);
        t.data(&data(1, false, 0, b"GET / HTTP/1.1\r\n\r\n"), &mut out);
        t.data(
            &data(
                1,
                true,
                0,
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ),
            &mut out,
        );
        let mut o = opened(2, Role::Server);
        o.fd = 6;
        t.open(o, &mut out);
        let mut d = data(2, true, 0, b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        d.fd = 6;
        t.data(&d, &mut out);
        let mut d = data(
            2,
            false,
            0,
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        d.fd = 6;
        t.data(&d, &mut out);
        assert_eq!(
            exchanges(&out),
            vec![("GET".into(), Some(200), 2), ("POST".into(), Some(201), 0)]
        );
    }

    #[test]
    fn lost_records_become_gaps_with_real_sizes() {
        let mut t = ConnTable::new(TableConfig::default());
        let mut out = Vec::new();
        t.open(opened(1, Role::Client), &mut out);
        t.data(&data(1, false, 0, b"GET /big HTTP/1.1\r\n\r\n"), &mut out);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
        t.data(&data(1, true, 0, head), &mut out);
        // Records for bytes [head, head+90000) were lost; the last 10000 arrive.
        let tail = vec![b'x'; 10_000];
        t.data(&data(1, true, head.len() as u64 + 90_000, &tail), &mut out);
        assert_eq!(exchanges(&out), vec![("GET".into(), Some(200), 100_000)]);
    }

    #[test]
    fn uncopied_tail_of_a_call_is_a_gap() {
        let mut t = ConnTable::new(TableConfig::default());
        let mut out = Vec::new();
        t.open(opened(1, Role::Client), &mut out);
        t.data(&data(1, false, 0, b"GET /f HTTP/1.1\r\n\r\n"), &mut out);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n";
        let mut d = data(1, true, 0, head);
        d.op_end = head.len() as u64 + 5_000_000;
        t.data(&d, &mut out);
        assert_eq!(exchanges(&out), vec![("GET".into(), Some(200), 5_000_000)]);
    }

    #[test]
    fn fd_reuse_never_merges_connections() {
        let mut t = ConnTable::new(TableConfig::default());
        let mut out = Vec::new();
        t.open(opened(1, Role::Client), &mut out);
        t.data(&data(1, false, 0, b"GET /first HTTP/1.1\r\n\r\n"), &mut out);
        // Same pid and fd, new connection: the first one ends unanswered.
        t.open(opened(2, Role::Client), &mut out);
        t.data(
            &data(2, true, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            &mut out,
        );
        let got = exchanges(&out);
        assert_eq!(got, vec![("GET".into(), None, 0)]);
        assert!(
            out.iter()
                .any(|e| matches!(e, ConnEvent::UnmatchedResponse))
        );
    }

    #[test]
    fn each_descriptor_and_process_is_its_own_connection() {
        let mut t = ConnTable::new(TableConfig::default());
        let mut out = Vec::new();
        for fd in 0..100 {
            t.open(opened_on(u64::from(fd), fd), &mut out);
        }
        let mut other = opened_on(1000, 7);
        other.pid = 11;
        t.open(other, &mut out);
        // Reusing fd 7 in pid 10 ends only the connection that had it there.
        t.open(opened_on(500, 7), &mut out);
        assert_eq!(t.len(), 101);
        assert!(!t.conns.contains_key(&7) && t.conns.contains_key(&1000));
        let mut fds = t.fds_of(10);
        fds.sort_unstable();
        assert_eq!(fds, (0..100).collect::<Vec<u32>>());
        // The old connection on fd 7 leaving again must not unindex its successor.
        t.close(7, None, &mut out);
        assert_eq!(t.by_fd.get(&(10, 7)), Some(&500));
        t.exit(10, &mut out);
        assert_eq!(t.len(), 1);
        assert_eq!(t.fds_of(11), vec![7]);
        assert!(t.fds_of(10).is_empty());
    }

    /// An empty 200 response.
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    /// A server connection on `fd`, accepted at `ts` without the peer's address.
    fn unplaced_server(conn_id: u64, fd: u32, ts: u64) -> Opened {
        Opened {
            remote: None,
            role: Role::Server,
            ts,
            ..opened_on(conn_id, fd)
        }
    }

    /// Server connection `conn_id` on `fd` reads `request` and answers [`OK`], its `n`th call
    /// of requests as long as this one.
    fn serve(
        t: &mut ConnTable,
        conn_id: u64,
        fd: u32,
        n: u64,
        request: &[u8],
        out: &mut Vec<ConnEvent>,
    ) {
        t.data(
            &data_on(conn_id, fd, true, n * request.len() as u64, request),
            out,
        );
        t.data(&data_on(conn_id, fd, false, n * OK.len() as u64, OK), out);
    }

    #[test]
    fn calls_wait_for_the_peer_of_a_connection_being_resolved() {
        let mut t = ConnTable::new(TableConfig::default());
        let mut out = Vec::new();
        let remotes = |out: &[ConnEvent]| each_exchange(out, |info, _| info.remote);
        // Accepted without the peer's address: userspace is asked where it comes from.
        t.open(unplaced_server(1, 5, 0), &mut out);
        assert!(matches!(out[..], [ConnEvent::Resolve { conn_id: 1, .. }]));
        out.clear();
        serve(&mut t, 1, 5, 0, b"GET /a HTTP/1.1\r\n\r\n", &mut out);
        assert!(exchanges(&out).is_empty());
        let peer: SocketAddr = "203.0.113.7:50000".parse().expect("addr");
        t.resolved(1, Peer::Tcp(peer), &mut out);
        assert_eq!(remotes(&out), vec![Some(peer)]);
        // Once known, calls go straight on.
        out.clear();
        serve(&mut t, 1, 5, 1, b"GET /b HTTP/1.1\r\n\r\n", &mut out);
        assert_eq!(remotes(&out), vec![Some(peer)]);
        // Closed before the answer: its calls go on without a peer.
        out.clear();
        t.open(unplaced_server(2, 6, 0), &mut out);
        serve(&mut t, 2, 6, 0, b"GET /c HTTP/1.1\r\n\r\n", &mut out);
        t.close(2, None, &mut out);
        assert_eq!(remotes(&out), vec![None]);
        // Too late to tell (closed and its fd reused, say): on without a peer, still followed.
        out.clear();
        t.open(unplaced_server(4, 8, 0), &mut out);
        serve(&mut t, 4, 8, 0, b"GET /g HTTP/1.1\r\n\r\n", &mut out);
        out.clear();
        t.resolved(4, Peer::Gone, &mut out);
        assert_eq!(remotes(&out), vec![None]);
        assert!(t.conns.contains_key(&4));
        // Not TCP after all: its calls are counted, not reported.
        out.clear();
        let mut o = opened_on(3, 7);
        o.verified = false;
        t.open(o, &mut out);
        t.data(
            &data_on(3, 7, false, 0, b"GET /d HTTP/1.1\r\n\r\n"),
            &mut out,
        );
        t.data(&data_on(3, 7, true, 0, OK), &mut out);
        out.clear();
        t.resolved(3, Peer::NotTcp, &mut out);
        assert!(
            matches!(out[..], [ConnEvent::Dropped { calls: 1 }]),
            "{out:?}"
        );
    }

    #[test]
    fn held_calls_go_on_in_order_at_the_cap_or_after_a_while() {
        let mut t = ConnTable::new(TableConfig::default());
        let mut out = Vec::new();
        t.open(unplaced_server(1, 5, 0), &mut out);
        out.clear();
        // Requests as long as each other, each naming its place.
        let call = |t: &mut ConnTable, n: u64, out: &mut Vec<ConnEvent>| {
            let request = format!("GET /{n:03} HTTP/1.1\r\n\r\n");
            serve(t, 1, 5, n, request.as_bytes(), out);
        };
        for n in 0..MAX_HELD as u64 {
            call(&mut t, n, &mut out);
        }
        assert!(exchanges(&out).is_empty());
        // One more: all of them go on, the held ones first.
        call(&mut t, MAX_HELD as u64, &mut out);
        assert_eq!(exchanges(&out).len(), MAX_HELD + 1);
        let targets = each_exchange(&out, |_, x| match &x.request.head.start {
            StartLine::Request { target, .. } => target.clone(),
            StartLine::Response { .. } => String::new(),
        });
        let in_order: Vec<String> = (0..=MAX_HELD).map(|n| format!("/{n:03}")).collect();
        assert_eq!(targets, in_order);
        // Another connection waiting for an answer that never comes lets its calls go after
        // a while.
        out.clear();
        t.open(unplaced_server(2, 6, 1_000), &mut out);
        serve(&mut t, 2, 6, 0, b"GET /n HTTP/1.1\r\n\r\n", &mut out);
        out.clear();
        t.tick(1_000 + MAX_HOLD_NS, &mut out);
        assert!(exchanges(&out).is_empty());
        t.tick(1_001 + MAX_HOLD_NS, &mut out);
        assert_eq!(exchanges(&out).len(), 1);
    }

    #[test]
    fn tls_plaintext_replaces_socket_bytes() {
        let mut t = ConnTable::new(TableConfig::default());
        let mut out = Vec::new();
        t.open(opened(1, Role::Client), &mut out);
        let mut w = data(1, false, 0, b"GET /secure HTTP/1.1\r\n\r\n");
        w.tls = true;
        w.tls_lib = common::tls_lib::OPENSSL;
        t.data(&w, &mut out);
        t.data(&data(1, true, 0, b"\x17\x03\x03 ciphertext"), &mut out);
        let mut r = data(1, true, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        r.tls = true;
        t.data(&r, &mut out);
        assert_eq!(
            each_exchange(&out, |info, _| info.tls_lib),
            vec![Some("openssl")]
        );
    }

    #[test]
    fn exit_and_timeouts_report_pending_requests() {
        let mut t = ConnTable::new(TableConfig {
            response_timeout_ns: 100,
            ..TableConfig::default()
        });
        let mut out = Vec::new();
        t.open(opened(1, Role::Client), &mut out);
        t.data(&data(1, false, 0, b"GET /a HTTP/1.1\r\n\r\n"), &mut out);
        t.tick(50, &mut out);
        assert!(exchanges(&out).is_empty());
        t.tick(1000, &mut out);
        assert_eq!(exchanges(&out), vec![("GET".into(), None, 0)]);
        out.clear();
        t.data(&data(1, false, 19, b"GET /b HTTP/1.1\r\n\r\n"), &mut out);
        t.exit(10, &mut out);
        assert_eq!(exchanges(&out), vec![("GET".into(), None, 0)]);
        assert!(t.is_empty());
    }

    #[test]
    fn buffers_over_budget_evict_the_least_recently_active() {
        let mut t = ConnTable::new(TableConfig {
            max_buffered: 150_000,
            ..TableConfig::default()
        });
        let mut out = Vec::new();
        for id in 1..=3u64 {
            let fd = id as u32;
            t.open(opened_on(id, fd), &mut out);
            let head = b"POST /up HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
            let mut d = data_on(id, fd, false, 0, head);
            d.ts = id;
            t.data(&d, &mut out);
            // 60 kB of the body arrive: each connection holds them until the body ends.
            let body = vec![b'x'; 60_000];
            let mut d = data_on(id, fd, false, head.len() as u64, &body);
            d.ts = id;
            t.data(&d, &mut out);
        }
        assert!(t.memory() > 150_000);
        out.clear();
        t.tick(10, &mut out);
        assert!(t.memory() <= 150_000, "{}", t.memory());
        assert_eq!(t.buffered(), t.memory());
        assert_eq!(t.len(), 2);
        let evicted = out
            .iter()
            .filter(|e| matches!(e, ConnEvent::Evicted))
            .count();
        assert_eq!(evicted, 1);
        // The oldest went, and its unfinished call was reported.
        assert!(!t.conns.contains_key(&1));
        assert_eq!(exchanges(&out), vec![("POST".into(), None, 0)]);
    }

    /// Each exchange's bodies as kept: (request data, request size, whether shed, sampled).
    fn bodies(out: &[ConnEvent]) -> Vec<(Vec<u8>, u64, bool, bool)> {
        each_exchange(out, |info, x| {
            let body = &x.request.body;
            (body.data.clone(), body.size, body.shed, info.sampled)
        })
    }

    #[test]
    fn bodies_are_not_kept_while_shedding_or_when_sampled_out() {
        let mut t = ConnTable::new(TableConfig::default());
        let mut out = Vec::new();
        let post = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        t.open(opened(1, Role::Client), &mut out);
        t.data(&data(1, false, 0, post), &mut out);
        t.data(&data(1, true, 0, ok), &mut out);
        t.set_shedding(false, 1);
        t.data(&data(1, false, post.len() as u64, post), &mut out);
        t.data(&data(1, true, ok.len() as u64, ok), &mut out);
        // Sampling one in two: the process's first new connection is analysed, not the next.
        t.set_shedding(true, 2);
        for (id, fd) in [(2, 6), (3, 7)] {
            t.open(opened_on(id, fd), &mut out);
            t.data(&data_on(id, fd, false, 0, post), &mut out);
            t.data(&data_on(id, fd, true, 0, ok), &mut out);
        }
        assert_eq!(
            bodies(&out),
            vec![
                (b"hello".to_vec(), 5, false, true),
                (Vec::new(), 5, true, true),
                (b"hello".to_vec(), 5, false, true),
                (Vec::new(), 5, true, false),
            ]
        );
    }

    #[test]
    fn connections_sampled_out_are_analysed_again_once_sampling_ends() {
        let mut t = ConnTable::new(TableConfig::default());
        let mut out = Vec::new();
        t.set_shedding(false, 4);
        for id in 0..8 {
            t.open(opened_on(id, id as u32), &mut out);
        }
        let sampled = |t: &ConnTable| t.conns.values().filter(|c| c.info.sampled).count();
        assert_eq!(sampled(&t), 2);
        // Easing to one in two: of the six left out, three come back.
        t.set_shedding(false, 2);
        assert_eq!(sampled(&t), 5);
        t.set_shedding(true, 1);
        assert_eq!(sampled(&t), 8);
    }

    #[test]
    fn a_body_cut_by_shedding_midway_is_marked_once_shedding_stops() {
        let mut t = ConnTable::new(TableConfig::default());
        let mut out = Vec::new();
        t.open(opened(1, Role::Client), &mut out);
        let head = b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello";
        t.data(&data(1, false, 0, head), &mut out);
        t.set_shedding(false, 1);
        t.data(&data(1, false, head.len() as u64, b"world"), &mut out);
        t.set_shedding(true, 1);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        t.data(&data(1, true, 0, ok), &mut out);
        assert_eq!(bodies(&out), vec![(b"hello".to_vec(), 10, true, true)]);
    }

    #[test]
    fn a_connection_that_is_not_tcp_is_dropped_with_its_pending_calls_counted() {
        let mut t = ConnTable::new(TableConfig::default());
        let mut out = Vec::new();
        let mut o = opened(1, Role::Client);
        o.verified = false;
        t.open(o, &mut out);
        t.data(&data(1, false, 0, b"GET /a HTTP/1.1\r\n\r\n"), &mut out);
        t.data(&data(1, false, 19, b"GET /b HTTP/1.1\r\n\r\n"), &mut out);
        out.clear();
        t.resolved(1, Peer::NotTcp, &mut out);
        assert!(t.is_empty());
        assert!(
            matches!(out[..], [ConnEvent::Dropped { calls: 2 }]),
            "{out:?}"
        );
        // Nothing in progress: nothing to count.
        t.open(opened(2, Role::Client), &mut out);
        out.clear();
        t.resolved(2, Peer::NotTcp, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn table_size_is_capped() {
        let mut t = ConnTable::new(TableConfig {
            max_connections: 3,
            ..TableConfig::default()
        });
        let mut out = Vec::new();
        for id in 0..10 {
            let mut o = opened(id, Role::Client);
            o.fd = id as u32;
            o.ts = id;
            t.open(o, &mut out);
        }
        assert_eq!(t.len(), 3);
        assert_eq!(
            out.iter()
                .filter(|e| matches!(e, ConnEvent::Evicted))
                .count(),
            7
        );
    }

    #[test]
    fn a_full_table_drops_its_least_recently_active_share_at_once() {
        let max = EVICT_SHARE * 4;
        let mut t = ConnTable::new(TableConfig {
            max_connections: max,
            ..TableConfig::default()
        });
        let mut out = Vec::new();
        for id in 0..=max as u64 {
            let mut o = opened_on(id, id as u32);
            // Connection 0 is the most recently active, the rest in order of opening.
            o.ts = if id == 0 { u64::MAX } else { id };
            t.open(o, &mut out);
        }
        let evicted = out
            .iter()
            .filter(|e| matches!(e, ConnEvent::Evicted))
            .count();
        assert_eq!(evicted, 4);
        assert_eq!(t.len(), max - 3);
        assert!(t.conns.contains_key(&0));
        assert!((1..=4).all(|id| !t.conns.contains_key(&id)));
        assert_eq!(t.by_fd.len(), t.len());
    }
}
