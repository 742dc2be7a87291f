//! OpenSSL plaintext: SSL_write/SSL_write_ex at entry only, SSL_read/SSL_read_ex at entry and
//! return, tied to their socket.
//!
//! A write's plaintext is all in the arguments, so in libssl it costs one trap: it is forwarded at entry
//! when the `SSL*`'s socket is known, else at the socket write OpenSSL makes inside the call
//! (`nested_write`), where the buffer is still valid. A write that hit EAGAIN will be called
//! again with the same bytes; that retry is recognised and not forwarded twice. A read needs
//! its return: only then are the bytes there and their count known. Runtimes that link
//! OpenSSL statically (node) get a return probe on writes too (see [`SSL_WRITE_RET`]).
//! The socket comes from the syscall OpenSSL makes inside the call, and is remembered per
//! `SSL*` for calls that make none (buffered reads; libraries that feed OpenSSL from memory,
//! like node, whose sockets are read and written outside any SSL call).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use common::{
    ConnState, FD_UNSET, FdKey, counter, data_flags, fd_kind, proto, stream_index, tls_lib,
};

use crate::{
    helpers::{
        Op, admit, count, current, emit_buf, is_self, peek_class, probe_all, read_user_value,
    },
    maps::{
        FDS, LAST_TLS_READ, PROBED, SSL_READ, SSL_SOCK, SSL_WRITE, SSL_WRITE_RET, SockRef, SslCall,
        SslKey, SslSock, SslWrite,
    },
};

/// A write whose socket is still unknown this long after its entry made no syscall: its
/// bytes went into memory, and a later syscall of the thread is not its own.
const STALE_WRITE_NS: u64 = 1_000_000_000;

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    // int SSL_write(SSL *ssl, const void *buf, int num)
    let num: i32 = ctx.arg(2).unwrap_or(0);
    if num > 0 {
        write_entry(&ctx, num as u64);
    }
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    // int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)
    let num: u64 = ctx.arg(2).unwrap_or(0);
    if num > 0 {
        write_entry(&ctx, num);
    }
    0
}

#[uprobe]
pub fn ssl_write_returned(ctx: ProbeContext) -> u32 {
    // SSL_write in a runtime with static OpenSSL (see [`SSL_WRITE_RET`]).
    call_entry(&ctx, &SSL_WRITE_RET, 0)
}

#[uprobe]
pub fn ssl_write_ex_returned(ctx: ProbeContext) -> u32 {
    call_entry(&ctx, &SSL_WRITE_RET, ctx.arg(3).unwrap_or(0))
}

#[uretprobe]
pub fn ssl_write_ret(ctx: RetProbeContext) -> u32 {
    ret(&ctx, &SSL_WRITE_RET, false)
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    // int SSL_read(SSL *ssl, void *buf, int num): returns the count.
    call_entry(&ctx, &SSL_READ, 0)
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    // int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes): returns 1.
    call_entry(&ctx, &SSL_READ, ctx.arg(3).unwrap_or(0))
}

#[uretprobe]
pub fn ssl_read_ret(ctx: RetProbeContext) -> u32 {
    ret(&ctx, &SSL_READ, true)
}

/// Whether `tgid`'s OpenSSL calls are probed (see [`PROBED`]).
#[inline(always)]
pub(crate) fn probed(tgid: u32) -> bool {
    // SAFETY: only the presence of the key is looked at.
    probe_all() || unsafe { PROBED.get(tgid) }.is_some()
}

#[inline(always)]
fn write_entry(ctx: &ProbeContext, len: u64) {
    let (id, tgid, _) = current();
    if is_self(tgid) {
        return;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    let mut call = SslWrite {
        ssl,
        buf,
        len,
        // SAFETY: no preconditions.
        ts: unsafe { bpf_ktime_get_ns() },
        fd: FD_UNSET,
        _pad: 0,
    };
    let key = SslKey { tgid, _pad: 0, ssl };
    if let Some(known) = SSL_SOCK.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid for this program run.
        let known = unsafe { &mut *known };
        let retried = known.retry != 0 && known.last_buf == buf && known.last_len == len;
        known.retry = 0;
        known.last_buf = buf;
        known.last_len = len;
        if let Some(st) = conn_of(tgid, &known.sock) {
            call.fd = known.sock.fd;
            if !retried {
                emit_plaintext(st, known.sock.fd, buf, len, false);
            }
        }
        // Otherwise the SSL* outlived its socket (or its address was reused): learn the
        // socket again from the write syscall.
    }
    let _ = SSL_WRITE.insert(id, call, 0);
}

/// Called at entry of every write syscall on a tracked socket of a probed process that is not
/// known to be plain HTTP. Returns true when the syscall is the one OpenSSL makes inside this
/// thread's SSL_write: its bytes are ciphertext. The first such syscall tells which socket the
/// `SSL*` runs on, and forwards the plaintext that waited for it.
#[inline(always)]
pub(crate) fn nested_write(id: u64, tgid: u32, fd: u32, st: &mut ConnState) -> bool {
    // An SSL_write with a return probe in progress: its return emits, it needs the socket.
    if let Some(found) = nested_call(&SSL_WRITE_RET, id, fd, st) {
        return found;
    }
    let Some(call) = SSL_WRITE.get_ptr_mut(id) else {
        return false;
    };
    // SAFETY: map value pointer, valid for this program run.
    let call = unsafe { &mut *call };
    if call.fd != FD_UNSET {
        return call.fd == fd;
    }
    // SAFETY: no preconditions.
    if unsafe { bpf_ktime_get_ns() }.wrapping_sub(call.ts) > STALE_WRITE_NS {
        let _ = SSL_WRITE.remove(id);
        return false;
    }
    call.fd = fd;
    let sock = SslSock {
        sock: SockRef {
            fd,
            _pad: 0,
            conn_id: st.conn_id,
        },
        last_buf: call.buf,
        last_len: call.len,
        retry: 0,
    };
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    let _ = SSL_SOCK.insert(key, sock, 0);
    emit_plaintext(st, fd, call.buf, call.len, false);
    true
}

/// The socket write inside this thread's SSL_write returned EAGAIN: OpenSSL keeps the
/// encrypted bytes and the application must call SSL_write again with the same arguments.
#[inline(always)]
pub(crate) fn write_would_block(id: u64, tgid: u32) {
    // SAFETY: copied out at once.
    let Some(call) = (unsafe { SSL_WRITE.get(id) }).copied() else {
        return;
    };
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    if let Some(known) = SSL_SOCK.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid for this program run.
        unsafe { (*known).retry = 1 };
    }
}

#[inline(always)]
fn call_entry(ctx: &ProbeContext, calls: &LruHashMap<u64, SslCall>, len_ptr: u64) -> u32 {
    let (id, tgid, _) = current();
    if is_self(tgid) {
        return 0;
    }
    let call = SslCall {
        ssl: ctx.arg(0).unwrap_or(0),
        buf: ctx.arg(1).unwrap_or(0),
        len_ptr,
        conn_id: 0,
        fd: FD_UNSET,
        _pad: 0,
    };
    let _ = calls.insert(id, call, 0);
    0
}

#[inline(always)]
fn ret(ctx: &RetProbeContext, calls: &LruHashMap<u64, SslCall>, read: bool) -> u32 {
    let (id, tgid, _) = current();
    // SAFETY: copied out before the remove.
    let Some(call) = (unsafe { calls.get(id) }).copied() else {
        return 0;
    };
    let _ = calls.remove(id);
    let ret: u64 = ctx.ret();
    let ret = ret as i32;
    // Learn which socket this SSL* runs on even from calls that move no data: node calls
    // SSL_read through the handshake, and its first SSL_write makes no syscall.
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    // A sentinel rather than `Option<SockRef>`: LLVM reads a `None`'s payload registers,
    // which the verifier rejects as uninitialized.
    let mut sock = SockRef {
        fd: FD_UNSET,
        _pad: 0,
        conn_id: 0,
    };
    if call.fd != FD_UNSET {
        sock = SockRef {
            fd: call.fd,
            _pad: 0,
            conn_id: call.conn_id,
        };
        learn(key, sock);
    // SAFETY: copied out at once.
    } else if let Some(known) = unsafe { SSL_SOCK.get(key) }.copied() {
        // No syscall this time: buffered bytes, or OpenSSL fed from memory.
        sock = known.sock;
    // SAFETY: copied out at once.
    } else if let Some(last) = unsafe { LAST_TLS_READ.get(id) }.copied() {
        // First call of an SSL* fed from memory: the socket this thread last read ciphertext
        // from is the one this session's handshake came through.
        learn(key, last);
        sock = last;
    }
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
    if sock.fd == FD_UNSET {
        count(counter::TLS_NO_SOCKET, 1);
        return 0;
    }
    match conn_of(tgid, &sock) {
        Some(st) => emit_plaintext(st, sock.fd, call.buf, n, read),
        None => count(counter::TLS_NO_SOCKET, 1),
    }
    0
}

/// Remembers that `key` runs on `sock`, keeping what is known of its last write.
#[inline(always)]
fn learn(key: SslKey, sock: SockRef) {
    if let Some(known) = SSL_SOCK.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid for this program run.
        unsafe { (*known).sock = sock };
        return;
    }
    let fresh = SslSock {
        sock,
        last_buf: 0,
        last_len: 0,
        retry: 0,
    };
    let _ = SSL_SOCK.insert(key, fresh, 0);
}

/// The tracked connection `sock` refers to, if it is still the same one.
#[inline(always)]
fn conn_of(tgid: u32, sock: &SockRef) -> Option<&'static mut ConnState> {
    let st = FDS.get_ptr_mut(FdKey { tgid, fd: sock.fd })?;
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

/// Called at entry of every read syscall on a tracked socket of a probed process that is not
/// known to be plain HTTP. Returns true when the syscall is the one OpenSSL makes inside this
/// thread's SSL_read: its bytes are ciphertext, and it tells which socket the `SSL*` runs on.
#[inline(always)]
pub(crate) fn nested_read(id: u64, fd: u32, st: &ConnState) -> bool {
    nested_call(&SSL_READ, id, fd, st).unwrap_or(false)
}

/// The thread's call in `calls`, if any, learns its socket from this syscall. `Some(true)`:
/// the syscall is that call's (its bytes are ciphertext); `None`: no such call.
#[inline(always)]
fn nested_call(calls: &LruHashMap<u64, SslCall>, id: u64, fd: u32, st: &ConnState) -> Option<bool> {
    let call = calls.get_ptr_mut(id)?;
    // SAFETY: map value pointer, valid for this program run.
    let call = unsafe { &mut *call };
    if call.fd == FD_UNSET {
        call.fd = fd;
        call.conn_id = st.conn_id;
        return Some(true);
    }
    Some(call.fd == fd)
}
