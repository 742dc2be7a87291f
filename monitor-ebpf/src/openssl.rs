//! OpenSSL plaintext: SSL_read/SSL_read_ex and SSL_write/SSL_write_ex, entry and return, tied
//! to their socket.
//!
//! Entry keeps the buffer; return knows how many bytes OpenSSL really took or gave (a call can
//! fail and be retried, with the same buffer or another), and the buffer is still valid there.
//! The socket comes from the syscall OpenSSL makes inside the call (`nested_syscall`), and is
//! remembered per `SSL*` for calls that make none (buffered reads; libraries that feed OpenSSL
//! from memory, like node, whose sockets are read and written outside any SSL call).

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use common::{
    ConnState, FD_UNSET, FdKey, counter, data_flags, fd_kind, proto, stream_index, tls_lib,
};

use crate::{
    helpers::{
        Op, OpSlot, admit, count, current, emit_buf, is_self, peek_class, probe_all,
        read_user_value,
    },
    maps::{
        FDS, LAST_TLS_READ, PROBED, SSL_READ, SSL_SOCK, SSL_WRITE, Slot, SockRef, SslCall, SslKey,
        insert_if_changed, put, take,
    },
};

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    // int SSL_write(SSL *ssl, const void *buf, int num): returns the count.
    entry(&ctx, &SSL_WRITE, 0)
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    // int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written): returns 1.
    entry(&ctx, &SSL_WRITE, ctx.arg(3).unwrap_or(0))
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    // int SSL_read(SSL *ssl, void *buf, int num): returns the count.
    entry(&ctx, &SSL_READ, 0)
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    // int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes): returns 1.
    entry(&ctx, &SSL_READ, ctx.arg(3).unwrap_or(0))
}

#[uretprobe]
pub fn ssl_write_ret(ctx: RetProbeContext) -> u32 {
    ret(&ctx, &SSL_WRITE, false)
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
fn entry(ctx: &ProbeContext, calls: &LruHashMap<u64, SslCall>, len_ptr: u64) -> u32 {
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
    let _ = put(calls, id, &call);
    0
}

#[inline(always)]
fn ret(ctx: &RetProbeContext, calls: &LruHashMap<u64, SslCall>, read: bool) -> u32 {
    let (id, tgid, _) = current();
    let Some(call) = take(calls, id) else {
        return 0;
    };
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
        insert_if_changed(&SSL_SOCK, key, &sock);
    // SAFETY: copied out at once.
    } else if let Some(known) = unsafe { SSL_SOCK.get(key) }.copied() {
        // No syscall this time: buffered bytes, or OpenSSL fed from memory.
        sock = known;
    // SAFETY: copied out at once.
    } else if let Some(last) = unsafe { LAST_TLS_READ.get(id) }.copied() {
        // First call of an SSL* fed from memory: the socket this thread last read ciphertext
        // from is the one this session's handshake came through.
        let _ = SSL_SOCK.insert(key, last, 0);
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
    if !admit(
        &mut st.tls_proto,
        &mut st.tls_budget,
        || peek_class(buf, n),
        false,
    ) {
        if let Some(s) = st.seq.get_mut(stream) {
            *s += n;
        }
        return;
    }
    let flags = data_flags::TLS | if read { data_flags::READ } else { 0 };
    let op = Op::claim(st, stream, fd, n, flags, tls_lib::OPENSSL);
    emit_buf(OpSlot::Thread, &op, buf);
}

/// Called at entry of every syscall on a tracked socket not known to be plain HTTP. Returns
/// true when the syscall is the one OpenSSL makes inside this thread's SSL call: its bytes are
/// ciphertext, and it tells which socket the `SSL*` runs on.
#[inline(always)]
pub(crate) fn nested_syscall(id: u64, fd: u32, st: &ConnState, read: bool) -> bool {
    let calls = if read { &SSL_READ } else { &SSL_WRITE };
    let Some(call) = calls.get_ptr_mut(id) else {
        return false;
    };
    // SAFETY: map value pointer, valid for this program run.
    let call = unsafe { &mut *call };
    if call.is_empty() {
        return false;
    }
    if call.fd == FD_UNSET {
        call.fd = fd;
        call.conn_id = st.conn_id;
        return true;
    }
    call.fd == fd
}
