//! Which fds are TCP connections: socket(), connect(), accept(), close().

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use common::{
    COMM_LEN, ConnClose, ConnOpen, ConnState, FdKey, RecordHeader, budget, counter, fd_kind, kind,
    open_flags, role,
};

use crate::{
    helpers::{
        count, current, is_self, next_conn_id, read_user_value, submit_control, syscall_arg,
        syscall_ret,
    },
    maps::{FDS, SYSCALL_ARGS, SyscallArgs, op, put, take},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u64 = 1;
const SOCK_TYPE_MASK: u64 = 0xf;
const EINPROGRESS: i64 = 115;

/// Stashes a syscall's arguments for its exit.
#[inline(always)]
pub(crate) fn stash(id: u64, args: &SyscallArgs) {
    if !put(&SYSCALL_ARGS, id, args) {
        count(counter::ARGS_MAP_FULL, 1);
    }
}

/// Takes the arguments this thread stashed at syscall entry.
#[inline(always)]
pub(crate) fn take_args(id: u64) -> Option<SyscallArgs> {
    take(&SYSCALL_ARGS, id)
}

/// The [`fd_kind`] of a known fd, 0 if unknown. A plain u8 rather than `Option<u8>`: LLVM
/// compares an `Option`'s payload register even when it is `None`, and the verifier rejects
/// reading that uninitialized register.
#[inline(always)]
fn fd_kind_of(tgid: u32, fd: u32) -> u8 {
    match FDS.get_ptr(FdKey { tgid, fd }) {
        // SAFETY: a map value pointer; only a byte is read.
        Some(s) => unsafe { (*s).kind },
        None => 0,
    }
}

#[tracepoint]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    let (id, tgid, _) = current();
    if is_self(tgid) {
        return 0;
    }
    let family = syscall_arg(&ctx, 0) as u16;
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let args = SyscallArgs {
        op: op::SOCKET,
        fd: 0,
        ptr: 0,
        len: syscall_arg(&ctx, 1),
        conn_id: 0,
        read: 0,
        _pad: 0,
    };
    stash(id, &args);
    0
}

#[tracepoint]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    let (id, tgid, _) = current();
    let Some(args) = take_args(id) else { return 0 };
    let fd = syscall_ret(&ctx);
    if args.op != op::SOCKET || fd < 0 {
        return 0;
    }
    let kind = if args.len & SOCK_TYPE_MASK == SOCK_STREAM {
        fd_kind::TCP_SOCKET
    } else {
        fd_kind::OTHER_SOCKET
    };
    let key = FdKey {
        tgid,
        fd: fd as u32,
    };
    if FDS.insert(key, ConnState::socket(kind), 0).is_err() {
        count(counter::FDS_MAP_FULL, 1);
    }
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let (id, tgid, _) = current();
    if is_self(tgid) {
        return 0;
    }
    let fd = syscall_arg(&ctx, 0) as u32;
    let addr = syscall_arg(&ctx, 1);
    let known_kind = fd_kind_of(tgid, fd);
    if known_kind == fd_kind::OTHER_SOCKET {
        return 0;
    }
    let Some(family) = read_user_value::<u16>(addr) else {
        return 0;
    };
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let args = SyscallArgs {
        op: op::CONNECT,
        fd,
        ptr: addr,
        len: 0,
        conn_id: 0,
        // A socket we saw created as SOCK_STREAM is TCP; anything else userspace checks.
        read: u32::from(known_kind == fd_kind::TCP_SOCKET),
        _pad: 0,
    };
    stash(id, &args);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let (id, tgid, tid) = current();
    let Some(args) = take_args(id) else { return 0 };
    let ret = syscall_ret(&ctx);
    if args.op != op::CONNECT || (ret != 0 && ret != -EINPROGRESS) {
        return 0;
    }
    open_conn(tgid, tid, args.fd, role::CLIENT, args.ptr, args.read != 0);
    0
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    accept_enter(&ctx)
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    accept_enter(&ctx)
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx)
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx)
}

#[inline(always)]
fn accept_enter(ctx: &TracePointContext) -> u32 {
    let (id, tgid, _) = current();
    if is_self(tgid) {
        return 0;
    }
    let listener = syscall_arg(ctx, 0) as u32;
    let known = fd_kind_of(tgid, listener);
    if known == fd_kind::OTHER_SOCKET {
        return 0;
    }
    let args = SyscallArgs {
        op: op::ACCEPT,
        fd: listener,
        ptr: syscall_arg(ctx, 1),
        len: 0,
        conn_id: 0,
        read: u32::from(known == fd_kind::TCP_SOCKET),
        _pad: 0,
    };
    stash(id, &args);
    0
}

#[inline(always)]
fn accept_exit(ctx: &TracePointContext) -> u32 {
    let (id, tgid, tid) = current();
    let Some(args) = take_args(id) else { return 0 };
    let fd = syscall_ret(ctx);
    if args.op != op::ACCEPT || fd < 0 {
        return 0;
    }
    // The peer address, if the caller asked for it, tells the family; without it only a
    // listener we saw created proves TCP (unix sockets accept too).
    let family = if args.ptr != 0 {
        read_user_value::<u16>(args.ptr).unwrap_or(0)
    } else {
        0
    };
    match family {
        AF_INET | AF_INET6 => open_conn(tgid, tid, fd as u32, role::SERVER, args.ptr, true),
        0 => open_conn(tgid, tid, fd as u32, role::SERVER, 0, args.read != 0),
        _ => {}
    }
    0
}

/// `struct sockaddr_in6` (its first 16 bytes are laid out like `struct sockaddr_in`).
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrIn6 {
    family: u16,
    port: [u8; 2],
    flowinfo: u32,
    addr: [u8; 16],
}

/// Starts tracking `fd` as a connection and tells userspace.
#[inline(always)]
fn open_conn(tgid: u32, tid: u32, fd: u32, conn_role: u8, addr: u64, verified: bool) {
    let conn_id = next_conn_id();
    let key = FdKey { tgid, fd };
    if FDS
        .insert(key, ConnState::new_conn(conn_id, budget::FRESH), 0)
        .is_err()
    {
        count(counter::FDS_MAP_FULL, 1);
        return;
    }
    let mut rec = ConnOpen {
        header: RecordHeader {
            kind: kind::CONN_OPEN,
            tgid,
            ts_ns: 0,
        },
        conn_id,
        fd,
        tid,
        family: 0,
        rport: [0; 2],
        role: conn_role,
        flags: if verified { 0 } else { open_flags::UNVERIFIED },
        _pad: [0; 2],
        raddr: [0; 16],
        comm: aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    // SAFETY: no preconditions.
    rec.header.ts_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if addr != 0 {
        // sockaddr_in is 16 bytes and the caller's buffer may be no larger: read the IPv6
        // form only once the family says it is there.
        if let Some(v4) = read_user_value::<[u8; 16]>(addr) {
            let family = u16::from_ne_bytes([v4[0], v4[1]]);
            rec.family = family;
            rec.rport = [v4[2], v4[3]];
            if family == AF_INET {
                rec.raddr = [
                    v4[4], v4[5], v4[6], v4[7], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ];
            } else if family == AF_INET6
                && let Some(v6) = read_user_value::<SockaddrIn6>(addr)
            {
                rec.raddr = v6.addr;
            }
        }
    }
    submit_control(rec);
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let (_, tgid, _) = current();
    let key = FdKey {
        tgid,
        fd: syscall_arg(&ctx, 0) as u32,
    };
    let Some(st) = FDS.get_ptr(key) else {
        return 0;
    };
    // SAFETY: map value pointer, copied out at once.
    let st = unsafe { *st };
    if st.kind == fd_kind::CONN {
        submit_control(ConnClose {
            header: RecordHeader {
                kind: kind::CONN_CLOSE,
                tgid,
                // SAFETY: no preconditions.
                ts_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
            },
            conn_id: st.conn_id,
            fd: key.fd,
            _pad: 0,
            seq: st.seq,
        });
    }
    let _ = FDS.remove(key);
    0
}
