//! Types that cross the kernel/user boundary of apimon.
//!
//! Conventions: every struct is `#[repr(C)]` with explicit padding, fixed-width integers only,
//! no `bool`. Addresses and ports are stored in network byte order as byte arrays. Every record
//! in the ring buffer starts with [`RecordHeader`]; its `kind` says which struct follows.
//! Userspace reads records with `read_unaligned` after checking the length.
#![no_std]

pub mod classify;
pub mod maps;

/// Payload bytes one data record carries at most; larger reads and writes are split.
pub const CHUNK_MAX: usize = 16 * 1024;
/// Records one syscall or TLS call may produce; bytes beyond are reported as a gap, not copied.
pub const CHUNKS_PER_OP: u32 = 64;
/// iovec entries walked per readv/writev/sendmsg/recvmsg.
pub const IOV_MAX_WALK: u32 = 64;
/// Length of `comm` (the kernel's TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;
/// Marks an unset file descriptor in stash maps.
pub const FD_UNSET: u32 = u32::MAX;
/// Conn ids created by userspace (connections found in /proc at start) have this bit set.
pub const CONN_ID_USER_BIT: u64 = 1 << 63;

/// Record kinds (stable numbers: userspace of one version may read another's kernel side).
pub mod kind {
    /// A TCP connection was connected or accepted: [`super::ConnOpen`].
    pub const CONN_OPEN: u32 = 1;
    /// A tracked connection's fd was closed: [`super::ConnClose`].
    pub const CONN_CLOSE: u32 = 2;
    /// Bytes read or written on a tracked connection: [`super::DataHeader`] + payload.
    pub const DATA: u32 = 3;
    /// A process called execve: [`super::ProcExec`].
    pub const PROC_EXEC: u32 = 4;
    /// A process (thread group) exited: [`super::RecordHeader`] only.
    pub const PROC_EXIT: u32 = 5;
    /// A process mapped a file as executable (a library was loaded): [`super::RecordHeader`].
    pub const EXEC_MMAP: u32 = 6;
}

/// First bytes of every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Process id (thread group id).
    pub tgid: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the record was made.
    pub ts_ns: u64,
}

/// Socket roles.
pub mod role {
    /// The process called connect(): it is the client.
    pub const CLIENT: u8 = 1;
    /// The process accepted the connection: it is the server.
    pub const SERVER: u8 = 2;
    /// Found already open; userspace decides from /proc and the traffic.
    pub const UNKNOWN: u8 = 0;
}

/// `ConnOpen.flags` bits.
pub mod open_flags {
    /// The kernel could not prove the socket is TCP; userspace must check /proc before use.
    pub const UNVERIFIED: u8 = 1;
}

/// A connection starts being tracked.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnOpen {
    pub header: RecordHeader,
    /// Unique id of this connection (never reused, unlike fds).
    pub conn_id: u64,
    pub fd: u32,
    /// Thread that connected or accepted.
    pub tid: u32,
    /// `AF_INET` (2), `AF_INET6` (10), or 0 when unknown.
    pub family: u16,
    /// Remote port, network byte order.
    pub rport: [u8; 2],
    /// One of [`role`].
    pub role: u8,
    /// [`open_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Remote address: 4 bytes for IPv4, 16 for IPv6, network byte order.
    pub raddr: [u8; 16],
    pub comm: [u8; COMM_LEN],
}

/// A tracked connection's fd was closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnClose {
    pub header: RecordHeader,
    pub conn_id: u64,
    pub fd: u32,
    pub _pad: u32,
    /// Final stream positions, indexed by [`stream_index`]: lets userspace account for bytes
    /// whose records were lost.
    pub seq: [u64; 4],
}

/// `DataHeader.flags` bits.
pub mod data_flags {
    /// Bytes the process read (ingress on the socket); unset: bytes it wrote.
    pub const READ: u16 = 1;
    /// Plaintext from a TLS library; unset: bytes of the socket itself.
    pub const TLS: u16 = 2;
    /// Last record of this syscall or TLS call.
    pub const LAST: u16 = 4;
}

/// Index of a stream's position in [`ConnState::seq`] and [`ConnClose::seq`].
#[must_use]
pub const fn stream_index(tls: bool, read: bool) -> usize {
    (tls as usize) * 2 + (read as usize)
}

/// Header of a data record; `len` payload bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    pub header: RecordHeader,
    pub conn_id: u64,
    /// Stream position of the first payload byte (per connection, per [`stream_index`]).
    pub seq: u64,
    /// Stream position just after the whole syscall or TLS call: if `LAST` is set and
    /// `op_end > seq + len`, the bytes in between happened but were not copied.
    pub op_end: u64,
    pub fd: u32,
    pub tid: u32,
    /// Payload bytes that follow this header.
    pub len: u32,
    /// [`data_flags`] bits.
    pub flags: u16,
    /// Which TLS library produced plaintext ([`tls_lib`]), 0 for socket bytes.
    pub tls_lib: u8,
    pub _pad: u8,
}

/// TLS libraries whose plaintext the uprobes capture.
pub mod tls_lib {
    pub const NONE: u8 = 0;
    pub const OPENSSL: u8 = 1;
}

/// A process executed a new program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcExec {
    pub header: RecordHeader,
    pub comm: [u8; COMM_LEN],
}

/// Kinds of state behind a (tgid, fd) key in [`maps::FDS`].
pub mod fd_kind {
    /// A TCP socket not yet connected (from socket()), or a TCP listener.
    pub const TCP_SOCKET: u8 = 1;
    /// A UDP or other inet socket: connect() on it is not a TCP connection.
    pub const OTHER_SOCKET: u8 = 2;
    /// A tracked TCP connection.
    pub const CONN: u8 = 3;
}

/// What the bytes of one stream of a connection have been classified as.
pub mod proto {
    /// Not decided yet; `budget` more records may be looked at.
    pub const UNKNOWN: u8 = 0;
    /// HTTP/1.x: forward everything.
    pub const HTTP: u8 = 1;
    /// TLS records: plaintext comes from uprobes, the socket bytes are not forwarded.
    pub const TLS: u8 = 2;
    /// Something else: forward nothing.
    pub const OTHER: u8 = 3;
}

/// How many non-HTTP records a stream may show before it is given up.
pub mod budget {
    /// A connection seen from its first byte: the first record decides.
    pub const FRESH: u8 = 1;
    /// A connection found open at start, or TLS plaintext whose start may have been missed:
    /// wait for a record that starts an HTTP message.
    pub const MIDSTREAM: u8 = 32;
}

/// Key of [`maps::FDS`]: a file descriptor of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Value of [`maps::FDS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnState {
    pub conn_id: u64,
    /// Next stream position per [`stream_index`].
    pub seq: [u64; 4],
    /// One of [`fd_kind`].
    pub kind: u8,
    /// [`proto`] of the socket's own bytes.
    pub raw_proto: u8,
    /// [`proto`] of the TLS plaintext.
    pub tls_proto: u8,
    /// Records the socket stream may still skip while [`proto::UNKNOWN`].
    pub raw_budget: u8,
    /// Records the TLS plaintext may still skip while [`proto::UNKNOWN`].
    pub tls_budget: u8,
    /// Set once TLS plaintext was seen on this connection.
    pub tls_lib: u8,
    pub _pad: [u8; 2],
}

impl ConnState {
    /// A newly tracked connection.
    #[must_use]
    pub const fn new_conn(conn_id: u64, budget: u8) -> Self {
        Self {
            conn_id,
            seq: [0; 4],
            kind: fd_kind::CONN,
            raw_proto: proto::UNKNOWN,
            tls_proto: proto::UNKNOWN,
            raw_budget: budget,
            tls_budget: budget::MIDSTREAM,
            tls_lib: tls_lib::NONE,
            _pad: [0; 2],
        }
    }

    /// A socket that is not (yet) a tracked connection.
    #[must_use]
    pub const fn socket(kind: u8) -> Self {
        let mut s = Self::new_conn(0, 0);
        s.kind = kind;
        s
    }
}

/// Indexes of the per-CPU drop counters in [`maps::COUNTERS`].
pub mod counter {
    /// Data records lost because the ring buffer was full.
    pub const RINGBUF_FULL_DATA: u32 = 0;
    /// Connection/process records lost because the ring buffer was full.
    pub const RINGBUF_FULL_CONTROL: u32 = 1;
    /// Bytes not copied because one call exceeded [`super::CHUNKS_PER_OP`] records.
    pub const BYTES_NOT_COPIED: u32 = 2;
    /// TLS plaintext dropped because its socket could not be found.
    pub const TLS_NO_SOCKET: u32 = 3;
    /// Syscalls not followed because the per-thread argument map was full.
    pub const ARGS_MAP_FULL: u32 = 4;
    /// Connections not tracked because the fd map was full.
    pub const FDS_MAP_FULL: u32 = 5;
    /// Records (not bytes) skipped while looking for the start of an HTTP message.
    pub const RECORDS_NOT_HTTP: u32 = 6;
    /// Records dropped because the process's buffer could not be read.
    pub const READ_FAILED: u32 = 7;
    /// Ops whose records after the first were not copied because the ring buffer was above
    /// its high-water mark (their bytes also count in [`BYTES_NOT_COPIED`]).
    pub const SHED_BODY: u32 = 8;
    /// Number of counters.
    pub const COUNT: u32 = 9;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made of integers and byte arrays, with explicit padding,
    // so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::FdKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnState {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<RecordHeader>(), 16);
        assert_eq!(
            size_of::<ConnOpen>(),
            16 + 8 + 4 + 4 + 2 + 2 + 2 + 2 + 16 + 16
        );
        assert_eq!(size_of::<ConnClose>(), 16 + 8 + 8 + 32);
        assert_eq!(
            size_of::<DataHeader>(),
            16 + 8 + 8 + 8 + 4 + 4 + 4 + 2 + 1 + 1
        );
        assert_eq!(size_of::<ConnState>(), 8 + 32 + 8);
        assert_eq!(size_of::<FdKey>(), 8);
        assert!(align_of::<DataHeader>() <= 8);
    }

    #[test]
    fn stream_indexes_are_distinct() {
        let all = [
            stream_index(false, false),
            stream_index(false, true),
            stream_index(true, false),
            stream_index(true, true),
        ];
        assert_eq!(all, [0, 1, 2, 3]);
    }
}
