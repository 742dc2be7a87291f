//! Ring buffer records, decoded from the kernel's byte layout (see `common`).

use std::{
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use common::{ConnClose, ConnOpen, DataHeader, ProcExec, RecordHeader, kind, open_flags, role};

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The process connected: its requests go out (egress calls).
    Client,
    /// The process accepted: it serves requests (ingress calls).
    Server,
    /// Found already open; decided from the traffic.
    Unknown,
}

/// A connection starts being tracked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub conn_id: u64,
    pub pid: u32,
    pub fd: u32,
    pub ts: u64,
    pub role: Role,
    /// The peer; `None` when the kernel could not read it (userspace looks it up).
    pub remote: Option<SocketAddr>,
    pub comm: String,
    /// The kernel proved the socket is TCP; otherwise check /proc first.
    pub verified: bool,
    /// Seen from its first byte (false for connections found open at start).
    pub fresh: bool,
}

/// Bytes moved on a tracked connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Data<'a> {
    pub conn_id: u64,
    pub pid: u32,
    pub fd: u32,
    pub ts: u64,
    /// Stream position of `payload[0]`.
    pub seq: u64,
    /// Stream position after the whole syscall or TLS call, meaningful when `last`.
    pub op_end: u64,
    /// The process read these bytes (else it wrote them).
    pub read: bool,
    /// TLS plaintext (else the socket's own bytes).
    pub tls: bool,
    /// Last record of its call.
    pub last: bool,
    /// `common::tls_lib` of TLS plaintext.
    pub tls_lib: u8,
    pub payload: &'a [u8],
}

/// One ring buffer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Opened(Opened),
    Closed {
        conn_id: u64,
        pid: u32,
        fd: u32,
        ts: u64,
        seq: [u64; 4],
    },
    Data(Data<'a>),
    Exec {
        pid: u32,
        ts: u64,
        comm: String,
    },
    Exit {
        pid: u32,
        ts: u64,
    },
    ExecMapped {
        pid: u32,
    },
}

/// When the kernel made a record (`bpf_ktime_get_ns`), from its header alone.
#[must_use]
pub fn timestamp(bytes: &[u8]) -> Option<u64> {
    read::<RecordHeader>(bytes).ok().map(|h| h.ts_ns)
}

/// A record that does not match the layout this agent was built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("data record claims {claimed} payload bytes but carries {carried}")]
    BadLength { claimed: u32, carried: usize },
}

/// Reads a `T` from the start of `bytes`, or fails if they are too few.
fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked above; T is a plain repr(C) integer struct, valid for any bits;
    // read_unaligned because ring buffer records are only 8-byte aligned by the kernel.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Process name from a NUL-padded `comm`.
#[must_use]
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// An IPv6 address as a peer is named: dual-stack sockets see IPv4 peers as
/// `::ffff:a.b.c.d`, which are IPv4 peers all the same.
#[must_use]
pub fn unmapped(v6: Ipv6Addr) -> IpAddr {
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// A socket address from the kernel's family, network-order port and address bytes.
#[must_use]
pub fn socket_addr(family: u16, port: [u8; 2], addr: [u8; 16]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes(port);
    let ip = match family {
        2 => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        10 => unmapped(Ipv6Addr::from(addr)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    let header: RecordHeader = read(bytes)?;
    let pid = header.tgid;
    let ts = header.ts_ns;
    Ok(match header.kind {
        kind::DATA => {
            let h: DataHeader = read(bytes)?;
            let payload = &bytes[size_of::<DataHeader>()..];
            let len = h.len as usize;
            if payload.len() < len {
                return Err(DecodeError::BadLength {
                    claimed: h.len,
                    carried: payload.len(),
                });
            }
            Record::Data(Data {
                conn_id: h.conn_id,
                pid,
                fd: h.fd,
                ts,
                seq: h.seq,
                op_end: h.op_end,
                read: h.flags & common::data_flags::READ != 0,
                tls: h.flags & common::data_flags::TLS != 0,
                last: h.flags & common::data_flags::LAST != 0,
                tls_lib: h.tls_lib,
                payload: &payload[..len],
            })
        }
        kind::CONN_OPEN => {
            let o: ConnOpen = read(bytes)?;
            Record::Opened(Opened {
                conn_id: o.conn_id,
                pid,
                fd: o.fd,
                ts,
                role: match o.role {
                    role::CLIENT => Role::Client,
                    role::SERVER => Role::Server,
                    _ => Role::Unknown,
                },
                remote: socket_addr(o.family, o.rport, o.raddr),
                comm: comm_str(&o.comm),
                verified: o.flags & open_flags::UNVERIFIED == 0,
                fresh: true,
            })
        }
        kind::CONN_CLOSE => {
            let c: ConnClose = read(bytes)?;
            Record::Closed {
                conn_id: c.conn_id,
                pid,
                fd: c.fd,
                ts,
                seq: c.seq,
            }
        }
        kind::PROC_EXEC => {
            let e: ProcExec = read(bytes)?;
            Record::Exec {
                pid,
                ts,
                comm: comm_str(&e.comm),
            }
        }
        kind::PROC_EXIT => Record::Exit { pid, ts },
        kind::EXEC_MMAP => Record::ExecMapped { pid },
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain repr(C) value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn data_record_round_trip() {
        let h = DataHeader {
            header: RecordHeader {
                kind: kind::DATA,
                tgid: 42,
                ts_ns: 7,
            },
            conn_id: 9,
            seq: 100,
            op_end: 105,
            fd: 3,
            tid: 43,
            len: 5,
            flags: common::data_flags::READ | common::data_flags::LAST,
            tls_lib: 0,
            _pad: 0,
        };
        let mut b = bytes_of(&h);
        b.extend_from_slice(b"hello and padding");
        let Record::Data(d) = decode(&b).expect("decodes") else {
            panic!("not data")
        };
        assert_eq!(d.payload, b"hello");
        assert_eq!(timestamp(&b), Some(h.header.ts_ns));
        assert_eq!(timestamp(&b[..8]), None);
        assert!(d.read && d.last && !d.tls);
        assert_eq!((d.pid, d.fd, d.seq, d.op_end), (42, 3, 100, 105));
    }

    #[test]
    fn short_and_lying_records_are_errors() {
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let h = DataHeader {
            header: RecordHeader {
                kind: kind::DATA,
                tgid: 1,
                ts_ns: 1,
            },
            conn_id: 1,
            seq: 0,
            op_end: 0,
            fd: 1,
            tid: 1,
            len: 1000,
            flags: 0,
            tls_lib: 0,
            _pad: 0,
        };
        assert!(matches!(
            decode(&bytes_of(&h)),
            Err(DecodeError::BadLength { .. })
        ));
        let bogus = RecordHeader {
            kind: 99,
            tgid: 1,
            ts_ns: 1,
        };
        assert_eq!(decode(&bytes_of(&bogus)), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn addresses() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[198, 51, 100, 10]);
        assert_eq!(
            socket_addr(2, [1, 187], a),
            Some("198.51.100.10:443".parse().expect("addr"))
        );
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12..].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(
            socket_addr(10, [0, 80], m),
            Some("10.0.0.1:80".parse().expect("addr"))
        );
        assert_eq!(socket_addr(1, [0, 80], m), None);
        assert_eq!(comm_str(b"curl\0\0\0\0"), "curl");
    }
}
