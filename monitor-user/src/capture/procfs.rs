//! What /proc says about processes and sockets: names, mapped files, TCP connections.

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

/// The process's name (`comm`), if it still exists.
#[must_use]
pub fn comm(pid: u32) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(s.trim_end_matches('\n').to_owned())
}

/// All process ids.
#[must_use]
pub fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

/// The inode of the socket behind `fd` of `pid`, if it is a socket.
#[must_use]
pub fn socket_inode(pid: u32, fd: u32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    parse_socket_link(link.to_str()?)
}

/// `socket:[12345]` -> 12345.
#[must_use]
pub fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Every socket fd of `pid`, with its inode.
#[must_use]
pub fn socket_fds(pid: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let fd: u32 = e.file_name().to_str()?.parse().ok()?;
            let link = fs::read_link(e.path()).ok()?;
            Some((fd, parse_socket_link(link.to_str()?)?))
        })
        .collect()
}

/// The network namespace of `pid` (its inode), to read each namespace's tables once.
#[must_use]
pub fn net_ns(pid: u32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    link.to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// TCP states in /proc/net/tcp.
pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_LISTEN: u8 = 0x0A;

/// One socket of /proc/net/tcp{,6}.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
}

/// TCP sockets by inode, in the network namespace `pid` is in.
#[must_use]
pub fn tcp_sockets(pid: u32) -> HashMap<u64, TcpSocket> {
    let mut all = HashMap::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        all.extend(text.lines().skip(1).filter_map(|l| parse_tcp_line(l, v6)));
    }
    all
}

/// One line of /proc/net/tcp or tcp6 -> (inode, socket).
#[must_use]
pub fn parse_tcp_line(line: &str, v6: bool) -> Option<(u64, TcpSocket)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = parse_proc_addr(fields.get(1)?, v6)?;
    let remote = parse_proc_addr(fields.get(2)?, v6)?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some((
        inode,
        TcpSocket {
            local,
            remote,
            state,
        },
    ))
}

/// `0100007F:1F90` -> 127.0.0.1:8080. The address is in the kernel's byte order, 32 bits at
/// a time; the port is plain hex.
fn parse_proc_addr(field: &str, v6: bool) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = if v6 {
        let mut b = [0u8; 16];
        for i in 0..4 {
            b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        super::records::unmapped(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::from(word(0)?))
    };
    Some(SocketAddr::new(ip, port))
}

/// A file mapped executable into a process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MappedFile {
    /// Device (as /proc prints it, e.g. `fd:01`) and inode: the file's identity.
    pub dev: String,
    pub inode: u64,
    /// Path as seen from inside the process's mount namespace.
    pub path: String,
}

/// Files `pid` maps executable, each once.
#[must_use]
pub fn exec_mappings(pid: u32) -> Vec<MappedFile> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut seen = Vec::new();
    for m in text.lines().filter_map(parse_maps_line) {
        if !seen.contains(&m) {
            seen.push(m);
        }
    }
    seen
}

/// One line of /proc/PID/maps, if it maps a file with execute permission.
#[must_use]
pub fn parse_maps_line(line: &str) -> Option<MappedFile> {
    let mut f = line.split_whitespace();
    let _range = f.next()?;
    let perms = f.next()?;
    let _offset = f.next()?;
    let dev = f.next()?;
    let inode: u64 = f.next()?.parse().ok()?;
    let path: String = f.collect::<Vec<_>>().join(" ");
    if !perms.contains('x') || inode == 0 || !path.starts_with('/') || path.ends_with(" (deleted)")
    {
        return None;
    }
    Some(MappedFile {
        dev: dev.to_owned(),
        inode,
        path,
    })
}

/// A path inside `pid`'s mount namespace, reachable from ours.
#[must_use]
pub fn in_root(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_lines() {
        let v4 = "   1: 0100007F:1F90 0A6433C6:01BB 01 00000000:00000000 00:00000000 00000000     0        0 34567 1 0000000000000000 20 4 30 10 -1";
        let (inode, s) = parse_tcp_line(v4, false).expect("parses");
        assert_eq!(inode, 34567);
        assert_eq!(s.local, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(s.remote, "198.51.100.10:443".parse().expect("addr"));
        assert_eq!(s.state, TCP_ESTABLISHED);
        let v6 = "   0: 00000000000000000000000001000000:1F90 0000000000000000FFFF00000100007F:C350 0A 00000000:00000000 00:00000000 00000000     0        0 999 1";
        let (inode, s) = parse_tcp_line(v6, true).expect("parses");
        assert_eq!(inode, 999);
        assert_eq!(s.local, "[::1]:8080".parse().expect("addr"));
        assert_eq!(s.remote, "127.0.0.1:50000".parse().expect("addr"));
        assert_eq!(s.state, TCP_LISTEN);
        assert_eq!(
            parse_tcp_line("  sl  local_address rem_address", false),
            None
        );
    }

    #[test]
    fn maps_lines() {
        let l = "7f1c2a000000-7f1c2a0a0000 r-xp 00022000 fd:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3";
        assert_eq!(
            parse_maps_line(l),
            Some(MappedFile {
                dev: "fd:01".into(),
                inode: 1234,
                path: "/usr/lib/x86_64-linux-gnu/libssl.so.3".into()
            })
        );
        assert_eq!(
            parse_maps_line("7f-8f r--p 00000000 fd:01 1234 /usr/lib/libssl.so.3"),
            None
        );
        assert_eq!(parse_maps_line("7f-8f r-xp 00000000 00:00 0 [vdso]"), None);
        assert_eq!(
            parse_maps_line("7f-8f r-xp 00000000 fd:01 77 /tmp/x (deleted)"),
            None
        );
        assert_eq!(parse_socket_link("socket:[4242]"), Some(4242));
        assert_eq!(parse_socket_link("/dev/null"), None);
    }

    #[test]
    fn this_process_is_visible() {
        let me = std::process::id();
        assert!(pids().contains(&me));
        assert!(comm(me).is_some());
        assert!(!exec_mappings(me).is_empty());
    }
}
