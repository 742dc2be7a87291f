//! Process lifecycle: exec (new programs may carry OpenSSL), exit (their connections end),
//! executable file mappings (a library such as libssl was loaded).

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use common::{COMM_LEN, ProcExec, RecordHeader, kind};

use crate::helpers::{current, is_self, submit_control, syscall_arg};

const PROT_EXEC: u64 = 4;

#[inline(always)]
fn header(kind: u32, tgid: u32) -> RecordHeader {
    // SAFETY: no preconditions.
    RecordHeader {
        kind,
        tgid,
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let (_, tgid, _) = current();
    if !is_self(tgid) {
        let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        submit_control(ProcExec {
            header: header(kind::PROC_EXEC, tgid),
            comm,
        });
    }
    0
}

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let (_, tgid, tid) = current();
    // Fires for every thread; the group leader's exit ends the process.
    if tgid == tid && !is_self(tgid) {
        submit_control(header(kind::PROC_EXIT, tgid));
    }
    0
}

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    let prot = syscall_arg(&ctx, 2);
    let fd = syscall_arg(&ctx, 4) as i64;
    if prot & PROT_EXEC == 0 || fd < 0 {
        return 0;
    }
    let (_, tgid, _) = current();
    if !is_self(tgid) {
        submit_control(header(kind::EXEC_MMAP, tgid));
    }
    0
}
