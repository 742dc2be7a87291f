//! OpenSSL plaintext: SSL_write/SSL_write_ex (entry only) and SSL_read/SSL_read_ex (entry and
//! return), tied to their socket.
//!
//! The socket comes from the syscall OpenSSL makes inside the call (see `nested_syscall`),
//! remembered per `SSL*` so later calls need none. SSL_write emits at entry when its socket is
//! known, else at its nested write: one trap per write. SSL_read must wait for its return to
//! know how many bytes arrived: two traps per read.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use common::{
    ConnState, FD_UNSET, FdKey, counter, data_flags, fd_kind, proto, stream_index, tls_lib,
};

use crate::{
    helpers::{Op, admit, count, current, emit_buf, is_self, peek_class, read_user_value},
    maps::{
        FDS, LAST_TLS_READ, SSL_READ, SSL_SOCK, SSL_WRITE, SockRef, SslKey, SslRead, SslWrite,
        SyscallArgs, op,
    },
    sockets::stash,
};

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    // int SSL_write(SSL *ssl, const void *buf, int num)
    let num: i32 = ctx.arg(2).unwrap_or(0);
    write_entry(&ctx, if num > 0 { num as u64 } else { 0 })
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    // int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)
    write_entry(&ctx, ctx.arg(2).unwrap_or(0))
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    // int SSL_read(SSL *ssl, void *buf, int num): the return value is the count.
    read_entry(&ctx, 0)
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    // int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes): returns 1 on success.
    read_entry(&ctx, ctx.arg(3).unwrap_or(0))
}

#[uretprobe]
pub fn ssl_read_ret(ctx: RetProbeContext) -> u32 {
    read_return(&ctx)
}

#[inline(always)]
fn write_entry(ctx: &ProbeContext, len: u64) -> u32 {
    let (id, tgid, _) = current();
    if is_self(tgid) || len == 0 {
        return 0;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    if let Some(prev) = SSL_WRITE.get_ptr_mut(&id) {
        // SAFETY: map value pointer, valid for this program run.
        let prev = unsafe { &mut *prev };
        // After EAGAIN, OpenSSL requires the same call again (or the unsent tail of it): the
        // bytes went out already at the first call.
        if prev.ssl == ssl && prev.failed != 0 && buf + len == prev.buf + prev.len {
            prev.buf = buf;
            prev.len = len;
            prev.failed = 0;
            return 0;
        }
    }
    let mut call = SslWrite { ssl, buf, len, conn_id: 0, fd: FD_UNSET, emitted: 0, failed: 0, _pad: [0; 2] };
    // SAFETY: copied out at once.
    if let Some(sock) = unsafe { SSL_SOCK.get(&SslKey { tgid, _pad: 0, ssl }) }.copied() {
        if let Some(st) = conn_of(tgid, &sock) {
            emit_plaintext(st, sock.fd, buf, len, false);
            call.fd = sock.fd;
            call.conn_id = sock.conn_id;
            call.emitted = 1;
        }
    }
    let _ = SSL_WRITE.insert(&id, &call, 0);
    0
}

#[inline(always)]
fn read_entry(ctx: &ProbeContext, len_ptr: u64) -> u32 {
    let (id, tgid, _) = current();
    if is_self(tgid) {
        return 0;
    }
    let call = SslRead {
        ssl: ctx.arg(0).unwrap_or(0),
        buf: ctx.arg(1).unwrap_or(0),
        len_ptr,
        conn_id: 0,
        fd: FD_UNSET,
        _pad: 0,
    };
    let _ = SSL_READ.insert(&id, &call, 0);
    0
}

#[inline(always)]
fn read_return(ctx: &RetProbeContext) -> u32 {
    let (id, tgid, _) = current();
    // SAFETY: copied out before the remove.
    let Some(call) = (unsafe { SSL_READ.get(&id) }).copied() else { return 0 };
    let _ = SSL_READ.remove(&id);
    let ret: u64 = ctx.ret();
    let ret = ret as i32;
    let n = if call.len_ptr == 0 {
        if ret <= 0 {
            return 0;
        }
        ret as u64
    } else {
        if ret != 1 {
            return 0;
        }
        read_user_value::<u64>(call.len_ptr).unwrap_or(0)
    };
    if n == 0 {
        return 0;
    }
    let key = SslKey { tgid, _pad: 0, ssl: call.ssl };
    let sock = if call.fd != FD_UNSET {
        let sock = SockRef { fd: call.fd, _pad: 0, conn_id: call.conn_id };
        let _ = SSL_SOCK.insert(&key, &sock, 0);
        sock
    // SAFETY: copied out at once.
    } else if let Some(sock) = unsafe { SSL_SOCK.get(&key) }.copied() {
        // Bytes OpenSSL had buffered: no syscall this time.
        sock
    // SAFETY: copied out at once.
    } else if let Some(sock) = unsafe { LAST_TLS_READ.get(&id) }.copied() {
        // OpenSSL fed from memory (node): the socket this thread last read ciphertext from.
        let _ = SSL_SOCK.insert(&key, &sock, 0);
        sock
    } else {
        count(counter::TLS_NO_SOCKET, 1);
        return 0;
    };
    match conn_of(tgid, &sock) {
        Some(st) => emit_plaintext(st, sock.fd, call.buf, n, true),
        None => count(counter::TLS_NO_SOCKET, 1),
    }
    0
}

/// The tracked connection `sock` refers to, if it is still the same one.
#[inline(always)]
fn conn_of(tgid: u32, sock: &SockRef) -> Option<&'static mut ConnState> {
    let st = FDS.get_ptr_mut(&FdKey { tgid, fd: sock.fd })?;
    // SAFETY: map value pointer, valid for this program run.
    let st = unsafe { &mut *st };
    (st.kind == fd_kind::CONN && st.conn_id == sock.conn_id).then_some(st)
}

/// Forwards `n` plaintext bytes at `buf` on connection `st`.
#[inline(always)]
fn emit_plaintext(st: &mut ConnState, fd: u32, buf: u64, n: u64, read: bool) {
    st.tls_lib = tls_lib::OPENSSL;
    if st.raw_proto == proto::UNKNOWN {
        st.raw_proto = proto::TLS;
    }
    let stream = stream_index(true, read);
    let class = peek_class(buf, n);
    if !admit(&mut st.tls_proto, &mut st.tls_budget, class, false) {
        if let Some(s) = st.seq.get_mut(stream) {
            *s += n;
        }
        return;
    }
    let flags = data_flags::TLS | if read { data_flags::READ } else { 0 };
    let op = Op::claim(st, stream, fd, n, flags, tls_lib::OPENSSL);
    emit_buf(&op, buf);
}

/// Called at entry of every syscall on a tracked socket not known to be plain HTTP. Returns
/// true when the syscall is the one OpenSSL makes inside this thread's SSL call: its bytes
/// are ciphertext, and it tells which socket the `SSL*` runs on.
#[inline(always)]
pub(crate) fn nested_syscall(id: u64, tgid: u32, fd: u32, st: &mut ConnState, read: bool) -> bool {
    if read {
        let Some(call) = SSL_READ.get_ptr_mut(&id) else { return false };
        // SAFETY: map value pointer, valid for this program run.
        let call = unsafe { &mut *call };
        if call.fd == FD_UNSET {
            call.fd = fd;
            call.conn_id = st.conn_id;
            return true;
        }
        return call.fd == fd;
    }
    let Some(call) = SSL_WRITE.get_ptr_mut(&id) else { return false };
    // SAFETY: map value pointer, valid for this program run.
    let call = unsafe { &mut *call };
    if call.fd == FD_UNSET {
        call.fd = fd;
        call.conn_id = st.conn_id;
        let sock = SockRef { fd, _pad: 0, conn_id: st.conn_id };
        let _ = SSL_SOCK.insert(&SslKey { tgid, _pad: 0, ssl: call.ssl }, &sock, 0);
        if call.emitted == 0 {
            call.emitted = 1;
            emit_plaintext(st, fd, call.buf, call.len, false);
        }
    } else if call.fd != fd {
        // Left over from an SSL_write on another socket (there is no return probe).
        let _ = SSL_WRITE.remove(&id);
        return false;
    }
    // Watch this write's result: EAGAIN means the application will call SSL_write again.
    let args = SyscallArgs { op: op::SSL_NESTED_WRITE, fd, ptr: 0, len: 0, conn_id: st.conn_id, read: 0, _pad: 0 };
    stash(id, &args);
    true
}

/// The write inside this thread's SSL_write failed: its retry must not emit again.
#[inline(always)]
pub(crate) fn nested_write_failed(id: u64) {
    if let Some(call) = SSL_WRITE.get_ptr_mut(&id) {
        // SAFETY: map value pointer, valid for this program run.
        unsafe { (*call).failed = 1 };
    }
}
