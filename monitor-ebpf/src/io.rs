//! The bytes of tracked connections: read/write and their vector and socket variants.
//!
//! Entry looks the fd up (the only cost for files and untracked sockets) and stashes the
//! arguments; exit copies what the call really moved (`ret` bytes).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use common::{ConnState, FdKey, data_flags, fd_kind, proto, stream_index};

use crate::{
    helpers::{
        Op, OpSlot, admit, current, emit_buf, emit_bytes_elsewhere, emit_iov, first_iovec, is_self,
        peek_class, read_user_value, syscall_arg, syscall_ret,
    },
    maps::{FDS, LAST_TLS_READ, SockRef, SyscallArgs, op, put},
    openssl,
    sockets::{stash, take_args},
};

/// Offsets in `struct msghdr` of `msg_iov` and `msg_iovlen`.
const MSG_IOV: u64 = 16;
const MSG_IOVLEN: u64 = 24;

#[tracepoint]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    enter(
        syscall_arg(&ctx, 0),
        syscall_arg(&ctx, 1),
        syscall_arg(&ctx, 2),
        op::BUF,
        true,
    )
}

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    enter(
        syscall_arg(&ctx, 0),
        syscall_arg(&ctx, 1),
        syscall_arg(&ctx, 2),
        op::BUF,
        false,
    )
}

#[tracepoint]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    enter(
        syscall_arg(&ctx, 0),
        syscall_arg(&ctx, 1),
        syscall_arg(&ctx, 2),
        op::BUF,
        true,
    )
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    enter(
        syscall_arg(&ctx, 0),
        syscall_arg(&ctx, 1),
        syscall_arg(&ctx, 2),
        op::BUF,
        false,
    )
}

#[tracepoint]
pub fn sys_enter_readv(ctx: TracePointContext) -> u32 {
    enter(
        syscall_arg(&ctx, 0),
        syscall_arg(&ctx, 1),
        syscall_arg(&ctx, 2),
        op::IOV,
        true,
    )
}

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    enter(
        syscall_arg(&ctx, 0),
        syscall_arg(&ctx, 1),
        syscall_arg(&ctx, 2),
        op::IOV,
        false,
    )
}

#[tracepoint]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    enter_msg(&ctx, true)
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    enter_msg(&ctx, false)
}

#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    enter(syscall_arg(&ctx, 0), 0, 0, op::SENDFILE, false)
}

/// sendmsg/recvmsg: the iovec array is inside the caller's `struct msghdr`. Read only once
/// the fd is known to be tracked.
#[inline(always)]
fn enter_msg(ctx: &TracePointContext, read: bool) -> u32 {
    let fd = syscall_arg(ctx, 0);
    let msg = syscall_arg(ctx, 1);
    enter_with(fd, read, op::IOV, || {
        let iov = read_user_value::<u64>(msg + MSG_IOV)?;
        let iovlen = read_user_value::<u64>(msg + MSG_IOVLEN)?;
        Some((iov, iovlen))
    })
}

#[inline(always)]
fn enter(fd: u64, ptr: u64, len: u64, kind: u32, read: bool) -> u32 {
    enter_with(fd, read, kind, || Some((ptr, len)))
}

#[inline(always)]
fn enter_with(fd: u64, read: bool, kind: u32, buffer: impl FnOnce() -> Option<(u64, u64)>) -> u32 {
    let (id, tgid, _) = current();
    if is_self(tgid) {
        return 0;
    }
    let fd = fd as u32;
    let Some(st) = FDS.get_ptr_mut(FdKey { tgid, fd }) else {
        return 0;
    };
    // SAFETY: map value pointer, valid for this program run.
    let st: &mut ConnState = unsafe { &mut *st };
    if st.kind != fd_kind::CONN {
        return 0;
    }
    match st.raw_proto {
        proto::HTTP => {}
        proto::OTHER => return 0,
        _ if openssl::probed(tgid) => {
            // Not known to be plain HTTP, in a process whose OpenSSL calls are probed: this
            // may be the socket under a TLS library call, whose bytes are ciphertext and whose
            // plaintext the uprobes carry.
            if openssl::nested_syscall(id, fd, st, read) {
                return 0;
            }
            if st.raw_proto == proto::TLS {
                if read {
                    let sock = SockRef {
                        fd,
                        _pad: 0,
                        conn_id: st.conn_id,
                    };
                    let _ = put(&LAST_TLS_READ, id, &sock);
                }
                return 0;
            }
        }
        // Nobody reads this process's TLS plaintext: its TLS sockets cost the lookup above.
        proto::TLS => return 0,
        _ => {}
    }
    let Some((ptr, len)) = buffer() else { return 0 };
    let args = SyscallArgs {
        op: kind,
        fd,
        ptr,
        len,
        conn_id: st.conn_id,
        read: u32::from(read),
        _pad: 0,
    };
    stash(id, &args);
    0
}

/// Every exit does the same: look at what this thread stashed at entry.
macro_rules! exits {
    ($($name:ident),* $(,)?) => {$(
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            exit(&ctx)
        }
    )*};
}

exits!(
    sys_exit_read,
    sys_exit_write,
    sys_exit_recvfrom,
    sys_exit_sendto,
    sys_exit_readv,
    sys_exit_writev,
    sys_exit_recvmsg,
    sys_exit_sendmsg,
    sys_exit_sendfile64,
);

#[inline(always)]
fn exit(ctx: &TracePointContext) -> u32 {
    let (id, tgid, _) = current();
    let Some(args) = take_args(id) else { return 0 };
    let ret = syscall_ret(ctx);
    if ret <= 0 || (args.op != op::BUF && args.op != op::IOV && args.op != op::SENDFILE) {
        return 0;
    }
    let Some(st) = FDS.get_ptr_mut(FdKey { tgid, fd: args.fd }) else {
        return 0;
    };
    // SAFETY: map value pointer, valid for this program run.
    let st: &mut ConnState = unsafe { &mut *st };
    if st.conn_id != args.conn_id {
        return 0;
    }
    let n = ret as u64;
    let read = args.read != 0;
    let flags = if read { data_flags::READ } else { 0 };
    let stream = stream_index(false, read);
    if args.op == op::SENDFILE {
        // The bytes came from a file, never through user memory: report their count only.
        if st.raw_proto == proto::HTTP {
            let op = Op::claim(st, stream, args.fd, n, flags, 0);
            emit_bytes_elsewhere(&op);
        }
        return 0;
    }
    let class = || {
        if args.op == op::BUF {
            peek_class(args.ptr, n)
        } else {
            match first_iovec(args.ptr, args.len) {
                Some(v) => peek_class(v.base, if v.len < n { v.len } else { n }),
                None => proto::UNKNOWN,
            }
        }
    };
    if !admit(&mut st.raw_proto, &mut st.raw_budget, class, true) {
        if let Some(s) = st.seq.get_mut(stream) {
            *s += n;
        }
        return 0;
    }
    let op = Op::claim(st, stream, args.fd, n, flags, 0);
    if args.op == op::BUF {
        emit_buf(OpSlot::Cpu, &op, args.ptr);
    } else {
        emit_iov(OpSlot::Cpu, &op, args.ptr, args.len);
    }
    0
}
