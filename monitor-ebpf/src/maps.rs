//! Every map of the kernel side, in one place, with why it exists.

use crate::helpers::Op;
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use common::{
    ConnState, FdKey, counter,
    maps::{EVENTS_BYTES, FDS_ENTRIES, PROBED_ENTRIES, SSL_ENTRIES, THREADS_ENTRIES},
};

/// Records for userspace. Sized at load time by the agent's config.
#[map(name = "EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Sockets and tracked connections by (tgid, fd). LRU so that fds of processes that died
/// without closing them age out instead of filling the map.
#[map(name = "FDS")]
pub(crate) static FDS: LruHashMap<FdKey, ConnState> = LruHashMap::with_max_entries(FDS_ENTRIES, 0);

/// Per-CPU counters of everything dropped, indexed by `common::counter`.
#[map(name = "COUNTERS")]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-CPU sequence for connection ids.
#[map(name = "NEXT_ID")]
pub(crate) static NEXT_ID: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The op a thread is forwarding from a uprobe, by pid_tgid: the state of
/// `helpers::apimon_emit_step`. Overwritten in place by the thread's next op (see [`put`]).
/// Per thread because a uprobe's program may be preempted (Linux 6.0 and later), and another
/// thread's program may then run on the same CPU.
#[map(name = "EMITS")]
pub(crate) static EMITS: LruHashMap<u64, Op> = LruHashMap::with_max_entries(THREADS_ENTRIES, 0);

/// The op a syscall tracepoint's program is forwarding: one slot per CPU. Those programs run
/// with preemption off and never nest on a CPU (the kernel's `bpf_prog_active`), so the slot is
/// theirs until they return, and each step reads it with an array lookup instead of a hash
/// lookup (three to six per op; docs/performance.md).
#[map(name = "EMIT_CPU")]
pub(crate) static EMIT_CPU: PerCpuArray<Op> = PerCpuArray::with_max_entries(1, 0);

/// What a thread's pending syscall needs at its exit, by pid_tgid (a [`Slot`]).
#[map(name = "SYSCALL_ARGS")]
pub(crate) static SYSCALL_ARGS: LruHashMap<u64, SyscallArgs> =
    LruHashMap::with_max_entries(THREADS_ENTRIES, 0);

/// The thread's SSL_write in progress, by pid_tgid (a [`Slot`], emptied by the return probe).
/// LRU so that threads gone, and calls whose return never came (longjmp), age out.
#[map(name = "SSL_WRITE")]
pub(crate) static SSL_WRITE: LruHashMap<u64, SslCall> =
    LruHashMap::with_max_entries(THREADS_ENTRIES, 0);

/// The thread's SSL_read in progress, by pid_tgid (a [`Slot`], emptied by the return probe).
#[map(name = "SSL_READ")]
pub(crate) static SSL_READ: LruHashMap<u64, SslCall> =
    LruHashMap::with_max_entries(THREADS_ENTRIES, 0);

/// Which socket an `SSL*` runs on, learned from the syscall made inside an SSL call. Lets
/// SSL_write emit at entry, and SSL_read return buffered bytes, without a nested syscall.
#[map(name = "SSL_SOCK")]
pub(crate) static SSL_SOCK: LruHashMap<SslKey, SockRef> =
    LruHashMap::with_max_entries(SSL_ENTRIES, 0);

/// Processes whose OpenSSL calls are probed, written by userspace. Only their TLS sockets
/// are worth the per-syscall bookkeeping (nested-call checks, last TLS read).
#[map(name = "PROBED")]
pub(crate) static PROBED: HashMap<u32, u8> = HashMap::with_max_entries(PROBED_ENTRIES, 0);

/// The TLS socket a thread last read outside any SSL call, by pid_tgid: the socket under
/// libraries that feed OpenSSL from memory (node), whose SSL_read makes no syscall.
#[map(name = "LAST_TLS_READ")]
pub(crate) static LAST_TLS_READ: LruHashMap<u64, SockRef> =
    LruHashMap::with_max_entries(THREADS_ENTRIES, 0);

/// Operations whose arguments wait in [`SYSCALL_ARGS`].
pub(crate) mod op {
    /// No syscall in progress (an emptied [`super::Slot`]).
    pub(crate) const NONE: u32 = 0;
    pub(crate) const SOCKET: u32 = 1;
    pub(crate) const CONNECT: u32 = 2;
    pub(crate) const ACCEPT: u32 = 3;
    /// read, write, recvfrom, sendto: one buffer.
    pub(crate) const BUF: u32 = 4;
    /// readv, writev, recvmsg, sendmsg: an iovec array.
    pub(crate) const IOV: u32 = 5;
    /// sendfile: bytes move from a file, none of them in user memory.
    pub(crate) const SENDFILE: u32 = 6;
}

/// A per-thread value written at a call's entry and taken at its exit.
///
/// The entry of a thread stays in its map once made, and a taken value is only marked empty:
/// an LRU map's update allocates a fresh element and frees the old one, and its delete takes
/// the bucket lock; per traced syscall that was about 4% of a host saturated with
/// keep-alive HTTP (perf, docs/performance.md), where a lookup and a write in place cost a
/// hash and a store.
pub(crate) trait Slot: Copy {
    /// Whether no call is in progress.
    fn is_empty(&self) -> bool;
    /// Marks the slot as holding no call.
    fn clear(&mut self);
}

/// Writes `value` under this thread's `id` (pid_tgid): in place when the entry exists, else a
/// new entry. Returns false when the map could not take it.
#[inline(always)]
pub(crate) fn put<V: Copy>(map: &LruHashMap<u64, V>, id: u64, value: &V) -> bool {
    match map.get_ptr_mut(id) {
        Some(v) => {
            // SAFETY: map value pointer, valid for this program run; a thread's entry is only
            // written by that thread.
            unsafe { *v = *value };
            true
        }
        None => map.insert(id, value, 0).is_ok(),
    }
}

/// Inserts `value` under a key the process's threads share, unless it is there already: an
/// LRU update allocates an element even when nothing changes. Replaced whole, never written
/// in place, so another thread never reads it half written.
#[inline(always)]
pub(crate) fn insert_if_changed<K, V: Copy + PartialEq>(map: &LruHashMap<K, V>, key: K, value: &V) {
    // SAFETY: copied out at once.
    if unsafe { map.get(&key) }.is_some_and(|v| v == value) {
        return;
    }
    let _ = map.insert(&key, value, 0);
}

/// Takes the value of this thread's slot, leaving it empty.
#[inline(always)]
pub(crate) fn take<V: Slot>(map: &LruHashMap<u64, V>, id: u64) -> Option<V> {
    let v = map.get_ptr_mut(id)?;
    // SAFETY: map value pointer, valid for this program run; only this thread writes it.
    let v = unsafe { &mut *v };
    if v.is_empty() {
        return None;
    }
    let taken = *v;
    v.clear();
    Some(taken)
}

/// Arguments of a syscall in progress.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SyscallArgs {
    pub(crate) op: u32,
    pub(crate) fd: u32,
    /// Buffer, iovec array or sockaddr.
    pub(crate) ptr: u64,
    /// Buffer size, iovec count, or for socket() the type.
    pub(crate) len: u64,
    /// Connection at entry; a mismatch at exit means the fd was reused meanwhile.
    pub(crate) conn_id: u64,
    /// Whether the bytes were read (1) or written (0); for socket() the family.
    pub(crate) read: u32,
    pub(crate) _pad: u32,
}

impl Slot for SyscallArgs {
    fn is_empty(&self) -> bool {
        self.op == op::NONE
    }
    fn clear(&mut self) {
        self.op = op::NONE;
    }
}

/// An SSL_read or SSL_write call in progress (see [`SSL_READ`], [`SSL_WRITE`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SslCall {
    pub(crate) ssl: u64,
    pub(crate) buf: u64,
    /// `size_t *` where the `_ex` variants store the count; 0 for the plain ones, whose
    /// return value is the count.
    pub(crate) len_ptr: u64,
    pub(crate) conn_id: u64,
    /// The socket of the syscall OpenSSL made inside the call, if it made one.
    pub(crate) fd: u32,
    pub(crate) _pad: u32,
}

impl Slot for SslCall {
    /// A call always has an `SSL*`.
    fn is_empty(&self) -> bool {
        self.ssl == 0
    }
    fn clear(&mut self) {
        self.ssl = 0;
    }
}

/// Key of [`SSL_SOCK`].
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SslKey {
    pub(crate) tgid: u32,
    pub(crate) _pad: u32,
    pub(crate) ssl: u64,
}

/// A connection, by fd and id (the id guards against fd reuse).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct SockRef {
    pub(crate) fd: u32,
    pub(crate) _pad: u32,
    pub(crate) conn_id: u64,
}
