//! Shared helpers, and the only place with verifier workarounds. Each trick says why.

use core::{arch::asm, ffi::c_void, ptr};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::bpf_probe_read_user,
    },
    programs::TracePointContext,
};
use common::{
    CHUNK_MAX, CHUNKS_PER_OP, ConnState, DataHeader, IOV_MAX_WALK, RecordHeader,
    classify::{PEEK_LEN, classify},
    counter, data_flags, kind, proto,
};

use crate::maps::{COUNTERS, EMIT_CPU, EMITS, EVENTS, NEXT_ID, put};

/// The agent's own pid: its traffic (alert deliveries, metrics scrapes) is not followed.
#[unsafe(no_mangle)]
static SELF_TGID: u32 = 0;

/// Wake userspace each time the ring buffer's backlog crosses a multiple of this many bytes
/// (see [`wakeup_flags`]); it also polls on a timer. Saves a wakeup per record under load.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

/// High-water mark of the ring buffer: while more bytes than this wait in it, an op forwards
/// its first record only (the HTTP head, when the op starts a message) and ends with a
/// payload-less record, so that the agent falls behind without the ring filling up and
/// dropping heads at random. Set by the loader (half the ring); the initializer never sheds.
#[unsafe(no_mangle)]
static SHED_BYTES: u64 = u64::MAX;

/// Nonzero: every process's OpenSSL calls are probed (`tls_probe = "all"`), not only those in
/// the `PROBED` map.
#[unsafe(no_mangle)]
static PROBE_ALL: u8 = 0;

/// Whether the loader said every process is probed (see [`PROBE_ALL`]).
#[inline(always)]
pub(crate) fn probe_all() -> bool {
    global(&PROBE_ALL) != 0
}

/// Reads a global set by the loader. `read_volatile` because the loader rewrites the value
/// after compilation; without it the compiler would fold the initializer in.
#[inline(always)]
fn global<T: Copy>(g: &T) -> T {
    // SAFETY: `g` is a valid, aligned static.
    unsafe { ptr::read_volatile(g) }
}

/// Current (pid_tgid, tgid, tid).
#[inline(always)]
pub(crate) fn current() -> (u64, u32, u32) {
    let id = bpf_get_current_pid_tgid();
    (id, (id >> 32) as u32, id as u32)
}

/// Whether `tgid` is the agent itself.
#[inline(always)]
pub(crate) fn is_self(tgid: u32) -> bool {
    tgid == global(&SELF_TGID)
}

/// Argument `i` of a `syscalls/sys_enter_*` tracepoint: after the 8-byte common header and
/// the 4-byte syscall number padded to 8, every argument takes 8 bytes.
#[inline(always)]
pub(crate) fn syscall_arg(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: the offset is inside every sys_enter_* record for i < 6.
    unsafe { read_ctx::<u64>(ctx, 16 + 8 * i) }
}

/// Return value of a `syscalls/sys_exit_*` tracepoint.
#[inline(always)]
pub(crate) fn syscall_ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: `ret` sits at offset 16 of every sys_exit_* record.
    unsafe { read_ctx::<i64>(ctx, 16) }
}

/// Loads a field of a tracepoint's record straight from the context.
///
/// Verifier trick: a tracepoint program may load from its context at a constant, aligned
/// offset, which is one instruction; `TracePointContext::read_at` calls
/// `bpf_probe_read_kernel` instead, a helper call and a fault-checked copy on every syscall
/// of every process (about 0.8% of a saturated host's CPU, docs/performance.md).
///
/// # Safety
/// `off` must be a constant, `T`-aligned offset of a field inside the tracepoint's record.
#[inline(always)]
unsafe fn read_ctx<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    // SAFETY: the caller's contract; the verifier checks the access too.
    unsafe { ptr::read(ctx.as_ptr().cast::<u8>().add(off).cast::<T>()) }
}

/// Adds `n` to drop counter `idx`.
///
/// An atomic add although the value is per-CPU: since Linux 6.0 a uprobe's program may be
/// preempted between its load and its store, and a tracepoint's program run on the same CPU
/// in between; a plain `+=` would then lose one of the two counts.
#[inline(always)]
pub(crate) fn count(idx: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // `core`'s atomics have no read-modify-write on this target: the BPF atomic add
        // (`BPF_STX | BPF_ATOMIC | BPF_DW`, `BPF_ADD`, no fetch), written out.
        // SAFETY: `c` is a map value pointer, 8-byte aligned and valid for this program run.
        unsafe {
            asm!(
                "lock *(u64 *)({c} + 0) += {n}",
                c = in(reg) c,
                n = in(reg) n,
                options(nostack),
            );
        }
    }
}

/// A connection id unique across CPUs and time: CPU number in the high bits.
#[inline(always)]
pub(crate) fn next_conn_id() -> u64 {
    // SAFETY: no preconditions.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
    let Some(c) = NEXT_ID.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU value, used only by syscall tracepoints (`open_conn`), which nothing
    // preempts: only this program run writes it until it returns.
    let n = unsafe {
        *c += 1;
        *c
    };
    ((cpu + 1) << 48) | (n & 0xffff_ffff_ffff)
}

/// `min(v, max)` that the verifier can see. Rust/LLVM may drop or move a plain comparison
/// (a helper then receives an unclamped register: "R2 min value is negative" or "unbounded
/// memory access"), so the clamp is written in BPF assembly on the register passed on.
#[inline(always)]
pub(crate) fn clamp(v: u64, max: u64) -> u64 {
    let mut v = v;
    // SAFETY: register arithmetic only.
    unsafe {
        asm!(
            "if {v} <= {max} goto +1",
            "{v} = {max}",
            v = inout(reg) v,
            max = in(reg) max,
            options(nomem, nostack),
        );
    }
    v
}

/// Copies `n` (<= `N`) bytes from user memory at `src` into `dst`. Returns false on a fault.
#[inline(always)]
fn read_user<const N: usize>(dst: *mut [u8; N], src: u64, n: u64) -> bool {
    let n = clamp(n, N as u64);
    // SAFETY: `dst` has room for N >= n bytes; the helper checks `src` itself.
    unsafe { bpf_probe_read_user(dst.cast::<c_void>(), n as u32, src as *const c_void) == 0 }
}

/// Reads a plain value from user memory.
#[inline(always)]
pub(crate) fn read_user_value<T: Copy>(src: u64) -> Option<T> {
    // SAFETY: the helper checks `src`; T is plain data.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(src as *const T) }.ok()
}

/// The first bytes at `src` (of `n` available) and their [`classify`] result.
#[inline(always)]
pub(crate) fn peek_class(src: u64, n: u64) -> u8 {
    let mut peek = [0u8; PEEK_LEN];
    let want = if n < PEEK_LEN as u64 {
        n
    } else {
        PEEK_LEN as u64
    };
    if !read_user::<PEEK_LEN>(&raw mut peek, src, want) {
        return proto::UNKNOWN;
    }
    classify(&peek, n as usize)
}

/// Decides whether a record is forwarded, updating the stream's protocol and budget. Streams
/// seen from their start decide on the first record; others skip records until one starts an
/// HTTP message. TLS records on a socket settle it: the plaintext will come from the TLS
/// library (`raw` is false for that plaintext stream).
///
/// `class` tells what the record's first bytes look like ([`peek_class`]). Only an undecided
/// stream calls it: on a stream known to be HTTP that copy from user memory would be thrown
/// away, on every op of every keep-alive connection.
#[inline(always)]
pub(crate) fn admit(
    state: &mut u8,
    budget: &mut u8,
    class: impl FnOnce() -> u8,
    raw: bool,
) -> bool {
    match *state {
        proto::HTTP => true,
        proto::UNKNOWN => match class() {
            proto::HTTP => {
                *state = proto::HTTP;
                true
            }
            // Too short to tell (under 4 bytes): pass it on, decide on a later record.
            proto::UNKNOWN => true,
            proto::TLS if raw => {
                *state = proto::TLS;
                false
            }
            _ => {
                count(counter::RECORDS_NOT_HTTP, 1);
                if *budget <= 1 {
                    *state = proto::OTHER;
                } else {
                    *budget -= 1;
                }
                false
            }
        },
        _ => false,
    }
}

/// One read or write being forwarded, kept in its [`OpSlot`] while its records go out.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Op {
    pub(crate) conn_id: u64,
    /// Stream position of the op's first byte.
    pub(crate) pos: u64,
    /// Bytes the op moved.
    pub(crate) len: u64,
    pub(crate) ts: u64,
    pub(crate) tgid: u32,
    pub(crate) tid: u32,
    pub(crate) fd: u32,
    pub(crate) flags: u16,
    pub(crate) tls_lib: u8,
    pub(crate) _pad: u8,
    /// Progress: bytes handled so far.
    off: u64,
    /// Plain buffer: its address. iovec op: the iovec array.
    src: u64,
    /// iovec entries in the array; 0 for a plain buffer.
    iovcnt: u64,
    /// Next iovec to load.
    next: u64,
    /// Address and length left of the current segment.
    base: u64,
    left: u64,
    records: u64,
}

impl Op {
    /// Claims `len` bytes of stream `stream` of `conn`: later ops start after them.
    #[inline(always)]
    pub(crate) fn claim(
        conn: &mut ConnState,
        stream: usize,
        fd: u32,
        len: u64,
        flags: u16,
        tls_lib: u8,
    ) -> Self {
        let (_, tgid, tid) = current();
        let pos = match conn.seq.get_mut(stream & 3) {
            Some(s) => {
                let p = *s;
                *s = p + len;
                p
            }
            None => 0,
        };
        Self {
            conn_id: conn.conn_id,
            pos,
            len,
            // SAFETY: no preconditions.
            ts: unsafe { bpf_ktime_get_ns() },
            tgid,
            tid,
            fd,
            flags,
            tls_lib,
            _pad: 0,
            off: 0,
            src: 0,
            iovcnt: 0,
            next: 0,
            base: 0,
            left: 0,
            records: 0,
        }
    }

    #[inline(always)]
    fn header(&self, off: u64, n: u64, last: bool) -> DataHeader {
        DataHeader {
            header: RecordHeader {
                kind: kind::DATA,
                tgid: self.tgid,
                ts_ns: self.ts,
            },
            conn_id: self.conn_id,
            seq: self.pos + off,
            op_end: self.pos + self.len,
            fd: self.fd,
            tid: self.tid,
            len: n as u32,
            flags: self.flags | if last { data_flags::LAST } else { 0 },
            tls_lib: self.tls_lib,
            _pad: 0,
        }
    }
}

/// Whether the ring buffer is above its high-water mark (see [`SHED_BYTES`]).
#[inline(always)]
fn ring_above_high_water() -> bool {
    EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) > global(&SHED_BYTES)
}

/// Submit flags for a record of `size` bytes: wake the reader when this record takes the
/// backlog across a multiple of [`WAKEUP_BYTES`], so at most once per that many bytes.
///
/// Not on every record while the backlog is above the mark: each forced wakeup queues an
/// irq_work, and raising it writes the APIC, a VM exit on a virtual machine; with the reader
/// busy draining a backlog above the mark that was 4% of a saturated host's CPU
/// (`native_write_msr`, docs/performance.md). A crossing two CPUs both miss is caught by the
/// next one, or by the reader's poll timeout.
#[inline(always)]
fn wakeup_flags(size: usize) -> u64 {
    let mark = global(&WAKEUP_BYTES);
    let avail = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    if mark == 0 || avail / mark != avail.saturating_sub(size as u64) / mark {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Submits a control record (connection or process lifecycle), waking the reader at once.
#[inline(always)]
pub(crate) fn submit_control<T: 'static>(record: T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(u64::from(BPF_RB_FORCE_WAKEUP));
        }
        None => count(counter::RINGBUF_FULL_CONTROL, 1),
    }
}

#[repr(C)]
struct DataRecord<const N: usize> {
    header: DataHeader,
    data: [u8; N],
}

/// One record with `n` payload bytes from `src`. Ring buffer reservations must have a
/// constant size, so the payload goes into the smallest of four fixed sizes that fits.
#[inline(always)]
fn emit_chunk(op: &Op, off: u64, src: u64, n: u64, last: bool) {
    if n <= 256 {
        emit_sized::<256>(op, off, src, n, last);
    } else if n <= 1024 {
        emit_sized::<1024>(op, off, src, n, last);
    } else if n <= 4096 {
        emit_sized::<4096>(op, off, src, n, last);
    } else {
        emit_sized::<CHUNK_MAX>(op, off, src, n, last);
    }
}

#[inline(always)]
fn emit_sized<const N: usize>(op: &Op, off: u64, src: u64, n: u64, last: bool) {
    let n = clamp(n, N as u64);
    let Some(mut entry) = EVENTS.reserve::<DataRecord<N>>(0) else {
        count(counter::RINGBUF_FULL_DATA, 1);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` points at a reserved, writable record of the right size.
    unsafe { ptr::write(&raw mut (*rec).header, op.header(off, n, last)) };
    // SAFETY: as above; `data` holds N bytes.
    if !read_user::<N>(unsafe { &raw mut (*rec).data }, src, n) {
        entry.discard(0);
        count(counter::READ_FAILED, 1);
        return;
    }
    entry.submit(wakeup_flags(size_of::<DataRecord<N>>()));
}

/// A payload-less last record: tells userspace where the op ended when its tail was not
/// copied (too long, or bytes that never were in user memory, like sendfile's).
#[inline(always)]
fn emit_end(op: &Op, off: u64) {
    match EVENTS.reserve::<DataHeader>(0) {
        Some(mut entry) => {
            entry.write(op.header(off, 0, true));
            entry.submit(wakeup_flags(size_of::<DataHeader>()));
        }
        None => count(counter::RINGBUF_FULL_DATA, 1),
    }
}

/// `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Iovec {
    pub(crate) base: u64,
    pub(crate) len: u64,
}

/// Where an op's progress is kept while its records go out.
#[derive(Clone, Copy)]
pub(crate) enum OpSlot {
    /// This CPU's [`EMIT_CPU`]: for syscall tracepoints, which nothing preempts.
    Cpu = 0,
    /// This thread's [`EMITS`]: for uprobes, whose programs may be preempted.
    Thread = 1,
}

/// One step of forwarding the op in `slot` (an [`OpSlot`]): load the next iovec, or send one
/// record, or (once done) account for what was not copied. Returns 0 while there is more.
///
/// Verifier trick: this is a *global* BPF function (exported, so bpf-linker keeps its linkage),
/// which the verifier checks once on its own instead of once per loop iteration and per path
/// of the caller. Its progress lives in a map for the same reason: the caller's loop carries
/// nothing but a counter, so verifying it costs a few instructions per iteration. The slot
/// comes as a plain number: a global function's arguments must be scalars or the context.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn apimon_emit_step(slot: u64) -> i64 {
    let op = if slot == OpSlot::Cpu as u64 {
        EMIT_CPU.get_ptr_mut(0)
    } else {
        let (id, _, _) = current();
        EMITS.get_ptr_mut(id)
    };
    let Some(op) = op else {
        return 1;
    };
    // SAFETY: map value pointer, valid for this program run; only this thread (or, for a CPU
    // slot, this program run) uses the entry.
    let op = unsafe { &mut *op };
    if op.off >= op.len {
        return 1;
    }
    if op.left == 0 {
        if op.iovcnt == 0 || op.next >= op.iovcnt || op.next >= u64::from(IOV_MAX_WALK) {
            return finish(op);
        }
        let Some(v) = read_user_value::<Iovec>(op.src + op.next * 16) else {
            return finish(op);
        };
        op.next += 1;
        op.base = v.base;
        let rest = op.len - op.off;
        op.left = if v.len < rest { v.len } else { rest };
        return 0;
    }
    if op.records >= u64::from(CHUNKS_PER_OP) {
        return finish(op);
    }
    // The first record went out (it carries the head, if this op starts a message): under
    // pressure the rest becomes a gap of known size rather than records the ring may drop.
    if op.records > 0 && ring_above_high_water() {
        count(counter::SHED_BODY, 1);
        return finish(op);
    }
    let n = if op.left > CHUNK_MAX as u64 {
        CHUNK_MAX as u64
    } else {
        op.left
    };
    let off = op.off;
    emit_chunk(op, off, op.base, n, off + n >= op.len);
    op.records += 1;
    op.off += n;
    op.base += n;
    op.left -= n;
    0
}

/// Ends an op early: the bytes not copied are counted, and a last record says where the op
/// ended so that userspace knows the gap's size.
#[inline(always)]
fn finish(op: &mut Op) -> i64 {
    if op.off < op.len {
        count(counter::BYTES_NOT_COPIED, op.len - op.off);
        emit_end(op, op.off);
        op.off = op.len;
    }
    1
}

/// Steps the caller's loop may take: one per record plus one per iovec, plus the finish.
const MAX_STEPS: u32 = CHUNKS_PER_OP + IOV_MAX_WALK + 1;

#[inline(always)]
fn run(slot: OpSlot, op: &Op) {
    let stored = match slot {
        OpSlot::Cpu => match EMIT_CPU.get_ptr_mut(0) {
            Some(p) => {
                // SAFETY: this CPU's value; nothing else runs on this CPU until we return.
                unsafe { *p = *op };
                true
            }
            None => false,
        },
        OpSlot::Thread => put(&EMITS, current().0, op),
    };
    if !stored {
        count(counter::ARGS_MAP_FULL, 1);
        return;
    }
    for _ in 0..MAX_STEPS {
        if apimon_emit_step(slot as u64) != 0 {
            break;
        }
    }
}

/// Forwards `op.len` bytes from the buffer at `src` in records of up to [`CHUNK_MAX`], its
/// progress kept in `slot`.
#[inline(always)]
pub(crate) fn emit_buf(slot: OpSlot, op: &Op, src: u64) {
    let mut op = *op;
    op.src = src;
    op.base = src;
    op.left = op.len;
    run(slot, &op);
}

/// Forwards `op.len` bytes spread over `iovcnt` iovecs at `iov`, its progress kept in `slot`.
#[inline(always)]
pub(crate) fn emit_iov(slot: OpSlot, op: &Op, iov: u64, iovcnt: u64) {
    let mut op = *op;
    op.src = iov;
    op.iovcnt = iovcnt;
    run(slot, &op);
}

/// An op whose bytes were never in user memory (sendfile): only its end is reported.
#[inline(always)]
pub(crate) fn emit_bytes_elsewhere(op: &Op) {
    emit_end(op, 0);
}

/// The first non-empty iovec's base and length, to classify what an iovec op carries.
#[inline(always)]
pub(crate) fn first_iovec(iov: u64, iovcnt: u64) -> Option<Iovec> {
    for i in 0..4u64 {
        if i >= iovcnt {
            return None;
        }
        let v = read_user_value::<Iovec>(iov + i * 16)?;
        if v.len > 0 {
            return Some(v);
        }
    }
    None
}
