//! Where the uprobes on OpenSSL's reads and writes go, so that each costs one cheap trap.
//!
//! A uprobe replaces an instruction with a breakpoint. The kernel emulates a few instructions
//! after the trap (push of a register, some nops, direct jumps and calls); any other it runs
//! out of line under single-step, a second trap. In a VM that second trap is the expensive
//! part: on the 6.18 VM this is built on, a count-only uprobe costs 1.1 µs on a `push` and
//! 13.5 µs on the `sub $0x18,%rsp` that `SSL_read` and `SSL_write` begin with
//! (docs/performance.md, `cargo xtask bench uprobe`).
//!
//! In OpenSSL 1.1.1 and 3.0-3.2, `SSL_read_ex(s, buf, num, readbytes)` is a call to an
//! internal `ssl_read_internal` with the same four arguments, and `SSL_read` a call to the
//! same function with a length on its stack (writes alike up to 3.2; 3.3's `SSL_write_ex`
//! passes a fifth argument and is left where it is). When the internal function begins with
//! an emulated instruction, the programs of the `_ex` contract go there: one probe covers
//! both public functions, and OpenSSL's SSL BIO, which calls it directly, at a tenth of the
//! cost. This is read from the machine code, never assumed from a version: anything that
//! does not match exactly keeps the probes on the public functions.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess,
    OpKind, Register,
};

/// The executable bytes of one section and the file offset of its first byte.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Text<'a> {
    /// The section's contents.
    pub(crate) bytes: &'a [u8],
    /// Where they start in the file: every offset here is a file offset.
    pub(crate) offset: u64,
}

/// A public function: its file offset and size (from the symbol table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Function {
    /// File offset of its first instruction.
    pub(crate) offset: u64,
    /// Its length in bytes (0 when the symbol does not say).
    pub(crate) size: u64,
}

/// One direction's public functions, both in `text`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pair<'a> {
    /// The section holding them.
    pub(crate) text: Text<'a>,
    /// `SSL_read_ex` or `SSL_write_ex`.
    pub(crate) ex: Function,
    /// `SSL_read` or `SSL_write`, if the file has it.
    pub(crate) plain: Option<Function>,
}

/// Where the `_ex` programs of one direction go instead of the public `_ex` function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Site {
    /// File offset of the probe: the internal function's first instruction, or its second
    /// after an `endbr64`.
    pub(crate) at: u64,
    /// Whether the plain function's calls all pass through it, so that it needs no probes.
    pub(crate) plain_covered: bool,
}

/// Most instructions looked at before a wrapper's call.
const MAX_WRAPPER: usize = 256;

/// The argument registers of the `_ex` contract, which a wrapper must hand on untouched.
const EX_ARGS: [Register; 4] = [Register::RDI, Register::RSI, Register::RDX, Register::RCX];

/// Where the read and write programs go; `None` keeps a direction on its public functions.
/// `public` holds the file offsets of every exported function, sorted: an internal function
/// is none of them.
pub(crate) fn place(
    read: Option<Pair<'_>>,
    write: Option<Pair<'_>>,
    public: &[u64],
) -> (Option<Site>, Option<Site>) {
    let read = read.and_then(|p| internal(p, public));
    let write = write.and_then(|p| internal(p, public));
    match (read, write) {
        // One function that both reads and writes is not what either contract says.
        (Some(r), Some(w)) if r.at == w.at => (None, None),
        other => other,
    }
}

/// The site of one direction, if its `_ex` function is a wrapper of an internal function
/// the kernel can probe cheaply.
fn internal(pair: Pair<'_>, public: &[u64]) -> Option<Site> {
    let text = pair.text;
    let target = handoff(text, pair.ex.offset)?;
    // An exported function (LibreSSL's SSL_read_ex calls SSL_read) has a contract of its
    // own, which the `_ex` programs would misread.
    if public.binary_search(&target).is_ok() {
        return None;
    }
    let at = cheap_site(text, target)?;
    // A plain function that keeps its own probes must not reach the internal one some other
    // way, or both probes would trap on its calls. Other callers are welcome: they read and
    // write with the same contract (OpenSSL's SSL BIO calls the internal functions
    // directly, calls the public probes never saw).
    let plain_covered = match pair.plain.map(|p| calls_to(text, p, target)) {
        None | Some(Calls::None) => false,
        Some(Calls::All) => true,
        Some(Calls::Some) => return None,
    };
    Some(Site { at, plain_covered })
}

/// The target of the first call `ex` makes, if every instruction before it runs straight
/// through and leaves the four argument registers alone.
fn handoff(text: Text<'_>, at: u64) -> Option<u64> {
    let mut decoder = decoder(text, at)?;
    let mut info = InstructionInfoFactory::new();
    for _ in 0..MAX_WRAPPER {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return None;
        }
        if insn.is_call_near() {
            return Some(insn.near_branch_target()).filter(|t| within(text, *t));
        }
        if insn.flow_control() != FlowControl::Next {
            return None;
        }
        if writes_any(&mut info, &insn, &EX_ARGS) {
            return None;
        }
    }
    None
}

/// How a plain function's calls reach the internal function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Calls {
    /// It never branches there: its calls need probes of their own.
    None,
    /// Every call it makes to data goes there, with a length pointer on its own stack (`rcx`
    /// from `rsp`): probing the internal function sees all of them.
    All,
    /// Some of its calls go there, or it may reach it in a way not seen.
    Some,
}

/// How the plain function `f` reaches `target`, from the whole function decoded once. An
/// indirect call or jump, a direct one to elsewhere in the section (another data path), or a
/// call to `target` without the length on the stack makes a function that reaches `target`
/// [`Calls::Some`]; calls out of the section (the PLT: error reporting, the stack protector)
/// are fine. Code that does not decode is taken to reach it.
fn calls_to(text: Text<'_>, f: Function, target: u64) -> Calls {
    let Some(mut decoder) = decoder(text, f.offset) else {
        return Calls::None;
    };
    let end = f.offset.saturating_add(f.size);
    let inside = |at: u64| (f.offset..end).contains(&at);
    let mut info = InstructionInfoFactory::new();
    let (mut reaches, mut clean, mut len_on_stack) = (false, true, false);
    while decoder.ip() < end && decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return Calls::Some;
        }
        match insn.flow_control() {
            FlowControl::IndirectBranch | FlowControl::IndirectCall => clean = false,
            FlowControl::Call
            | FlowControl::UnconditionalBranch
            | FlowControl::ConditionalBranch => {
                let to = insn.near_branch_target();
                if to == target {
                    reaches = true;
                    clean &= len_on_stack;
                } else if within(text, to) && !inside(to) {
                    clean = false;
                }
            }
            _ => {}
        }
        if writes_any(&mut info, &insn, &[Register::RCX]) {
            len_on_stack = stack_address_into_rcx(&insn);
        }
    }
    match (reaches, clean) {
        (false, _) => Calls::None,
        (true, true) => Calls::All,
        (true, false) => Calls::Some,
    }
}

/// `mov %rsp,%rcx` or `lea d(%rsp),%rcx`.
fn stack_address_into_rcx(insn: &Instruction) -> bool {
    match insn.code() {
        Code::Mov_r64_rm64 | Code::Mov_rm64_r64 => {
            insn.op0_register() == Register::RCX
                && insn.op1_kind() == OpKind::Register
                && insn.op1_register() == Register::RSP
        }
        Code::Lea_r64_m => {
            insn.op0_register() == Register::RCX
                && insn.memory_base() == Register::RSP
                && insn.memory_index() == Register::None
        }
        _ => false,
    }
}

/// Whether `insn` writes (or may write) one of `regs`, or a part of one.
fn writes_any(info: &mut InstructionInfoFactory, insn: &Instruction, regs: &[Register]) -> bool {
    info.info(insn).used_registers().iter().any(|r| {
        regs.contains(&r.register().full_register())
            && !matches!(
                r.access(),
                OpAccess::Read | OpAccess::CondRead | OpAccess::None
            )
    })
}

/// Where a probe on the function at `at` is cheap: its first instruction if the kernel
/// emulates it, or the one after a leading `endbr64` (which leaves `rsp` alone, so a return
/// probe there still finds the return address on top of the stack).
fn cheap_site(text: Text<'_>, at: u64) -> Option<u64> {
    let mut decoder = decoder(text, at)?;
    let first = decoder.decode();
    if emulated(text, &first) {
        return Some(at);
    }
    if first.code() != Code::Endbr64 {
        return None;
    }
    let second = decoder.decode();
    emulated(text, &second).then(|| second.ip())
}

/// Whether the kernel emulates `insn` after a uprobe's trap, as measured on 6.18
/// (`arch/x86/kernel/uprobes.c`): `push` of a 64-bit register, with at most a REX.B prefix,
/// or a one-byte or `0f 1f` nop. An older kernel that runs these out of line makes the probe
/// cost what it costs on the public function, no more.
fn emulated(text: Text<'_>, insn: &Instruction) -> bool {
    let first_byte = usize::try_from(insn.ip() - text.offset)
        .ok()
        .and_then(|i| text.bytes.get(i).copied());
    match insn.code() {
        Code::Push_r64 => insn.len() == 1 || (insn.len() == 2 && first_byte == Some(0x41)),
        Code::Nopd => insn.len() == 1,
        Code::Nop_rm32 => first_byte == Some(0x0F),
        _ => false,
    }
}

/// Whether file offset `at` lies in `text`.
fn within(text: Text<'_>, at: u64) -> bool {
    (text.offset..text.offset + text.bytes.len() as u64).contains(&at)
}

/// A 64-bit decoder over `text` from file offset `at`, its instruction pointer in file
/// offsets (branch targets come out as file offsets too, valid within the section).
fn decoder(text: Text<'_>, at: u64) -> Option<Decoder<'_>> {
    if !within(text, at) {
        return None;
    }
    let start = usize::try_from(at - text.offset).ok()?;
    Some(Decoder::with_ip(
        64,
        &text.bytes[start..],
        at,
        DecoderOptions::NONE,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text at file offset 0x1000 shaped like Debian's OpenSSL 3.0.22: `SSL_read_ex` at
    /// 0x1100, `SSL_read` at 0x1120, the internal function at 0x1200 starting with `first`.
    fn openssl_like(first: &[u8]) -> Vec<u8> {
        let mut t = vec![0xCC; 0x300];
        // SSL_read_ex: sub $0x8,%rsp; call internal; add $0x8,%rsp; ret
        t[0x100..0x104].copy_from_slice(&[0x48, 0x83, 0xEC, 0x08]);
        call(&mut t, 0xE8, 0x104, 0x200);
        t[0x109..0x10E].copy_from_slice(&[0x48, 0x83, 0xC4, 0x08, 0xC3]);
        // SSL_read: sub $0x18,%rsp; test %edx,%edx; js +0; mov %rsp,%rcx; movslq %edx,%rdx;
        // call internal; add $0x18,%rsp; ret
        t[0x120..0x124].copy_from_slice(&[0x48, 0x83, 0xEC, 0x18]);
        t[0x124..0x128].copy_from_slice(&[0x85, 0xD2, 0x78, 0x00]);
        t[0x128..0x12B].copy_from_slice(&[0x48, 0x89, 0xE1]);
        t[0x12B..0x12E].copy_from_slice(&[0x48, 0x63, 0xD2]);
        call(&mut t, 0xE8, 0x12E, 0x200);
        t[0x133..0x138].copy_from_slice(&[0x48, 0x83, 0xC4, 0x18, 0xC3]);
        t[0x200..0x200 + first.len()].copy_from_slice(first);
        t
    }

    /// A direct call (`E8`) or jump (`E9`) at `at` to `to`, offsets into the text.
    fn call(t: &mut [u8], op: u8, at: usize, to: usize) {
        t[at] = op;
        let rel = (to as i64 - (at as i64 + 5)) as i32;
        t[at + 1..at + 5].copy_from_slice(&rel.to_le_bytes());
    }

    const PUSH_R13: &[u8] = &[0x41, 0x55];
    const EX: Function = Function {
        offset: 0x1100,
        size: 0x20,
    };
    const PLAIN: Function = Function {
        offset: 0x1120,
        size: 0x18,
    };
    const PUBLIC: [u64; 2] = [0x1100, 0x1120]; // sorted

    /// `SSL_read_ex` and `plain` in `t`, laid out at file offset 0x1000.
    fn pair(t: &[u8], plain: Option<Function>) -> Pair<'_> {
        let text = Text {
            bytes: t,
            offset: 0x1000,
        };
        Pair {
            text,
            ex: EX,
            plain,
        }
    }

    fn read_site(t: &[u8], plain: Option<Function>) -> Option<Site> {
        place(Some(pair(t, plain)), None, &PUBLIC).0
    }

    const COVERED: Option<Site> = Some(Site {
        at: 0x1200,
        plain_covered: true,
    });
    const ALONE: Option<Site> = Some(Site {
        at: 0x1200,
        plain_covered: false,
    });

    #[test]
    fn probes_go_on_the_internal_function_when_its_first_instruction_is_emulated() {
        let t = openssl_like(PUSH_R13);
        assert_eq!(read_site(&t, Some(PLAIN)), COVERED);
        assert_eq!(read_site(&t, None), ALONE);
        // A one-byte push, and the nops this kernel emulates.
        for first in [&[0x55][..], &[0x90], &[0x0F, 0x1F, 0x44, 0x00, 0x00]] {
            assert_eq!(
                read_site(&openssl_like(first), Some(PLAIN)),
                COVERED,
                "{first:x?}"
            );
        }
    }

    #[test]
    fn after_endbr64_the_next_instruction_is_the_site() {
        let t = openssl_like(&[0xF3, 0x0F, 0x1E, 0xFA, 0x41, 0x55]);
        assert_eq!(
            read_site(&t, Some(PLAIN)),
            Some(Site {
                at: 0x1204,
                plain_covered: true
            })
        );
    }

    #[test]
    fn a_single_stepped_first_instruction_keeps_the_public_probes() {
        // sub $0x38,%rsp; endbr64 then sub; push with an operand-size or REX.W prefix.
        let firsts: [&[u8]; 4] = [
            &[0x48, 0x83, 0xEC, 0x38],
            &[0xF3, 0x0F, 0x1E, 0xFA, 0x48, 0x83, 0xEC, 0x38],
            &[0x66, 0x50],
            &[0x48, 0x55],
        ];
        for first in firsts {
            assert_eq!(
                read_site(&openssl_like(first), Some(PLAIN)),
                None,
                "{first:x?}"
            );
        }
    }

    #[test]
    fn callers_outside_the_public_functions_do_not_matter() {
        // As OpenSSL's SSL BIO calls it.
        let mut t = openssl_like(PUSH_R13);
        call(&mut t, 0xE8, 0x280, 0x200);
        assert_eq!(read_site(&t, Some(PLAIN)), COVERED);
    }

    #[test]
    fn a_wrapper_that_changes_an_argument_is_not_followed() {
        // OpenSSL 3.3's SSL_write_ex: xor %ecx,%ecx before its call (a fifth argument in
        // another register would be invisible, the zeroed one is not).
        let mut t = openssl_like(PUSH_R13);
        t[0x100..0x104].copy_from_slice(&[0x31, 0xC9, 0x90, 0x90]);
        assert_eq!(read_site(&t, Some(PLAIN)), None);
        // mov %rsp,%rcx
        t[0x100..0x104].copy_from_slice(&[0x48, 0x89, 0xE1, 0x90]);
        assert_eq!(read_site(&t, Some(PLAIN)), None);
    }

    #[test]
    fn a_wrapper_of_a_public_function_is_not_followed() {
        // LibreSSL's shape: SSL_read_ex calls SSL_read.
        let mut t = openssl_like(PUSH_R13);
        call(&mut t, 0xE8, 0x104, 0x120);
        assert_eq!(read_site(&t, Some(PLAIN)), None);
    }

    #[test]
    fn one_function_for_both_directions_is_not_followed() {
        let t = openssl_like(PUSH_R13);
        let both = pair(&t, Some(PLAIN));
        assert_eq!(place(Some(both), Some(both), &PUBLIC), (None, None));
        assert_eq!(place(Some(both), None, &PUBLIC), (COVERED, None));
    }

    #[test]
    fn a_plain_function_calling_elsewhere_keeps_its_own_probes() {
        let mut t = openssl_like(PUSH_R13);
        call(&mut t, 0xE8, 0x12E, 0x240);
        assert_eq!(read_site(&t, Some(PLAIN)), ALONE);
    }

    #[test]
    fn a_plain_function_that_also_reaches_it_keeps_every_probe_public() {
        // Its first call goes elsewhere, then it jumps to the internal function.
        let mut t = openssl_like(PUSH_R13);
        call(&mut t, 0xE8, 0x12E, 0x240);
        call(&mut t, 0xE9, 0x133, 0x200);
        assert_eq!(read_site(&t, Some(PLAIN)), None);
    }

    #[test]
    fn a_plain_function_needs_its_length_pointer_on_its_stack_and_no_indirect_calls() {
        let mut t = openssl_like(PUSH_R13);
        // No mov %rsp,%rcx: rcx is whatever the caller left.
        t[0x128..0x12B].copy_from_slice(&[0x90, 0x90, 0x90]);
        assert_eq!(read_site(&t, Some(PLAIN)), None);
        // The js becomes call *%rax: another path for the data.
        let mut t = openssl_like(PUSH_R13);
        t[0x126..0x128].copy_from_slice(&[0xFF, 0xD0]);
        assert_eq!(read_site(&t, Some(PLAIN)), None);
    }

    #[test]
    fn garbage_and_out_of_range_offsets_are_no_answer() {
        let garbage = vec![0xFF; 0x300];
        assert_eq!(read_site(&garbage, Some(PLAIN)), None);
        let tiny = [0xE8];
        let truncated = Pair {
            ex: Function {
                offset: 0x1000,
                size: 1,
            },
            ..pair(&tiny, None)
        };
        assert_eq!(place(Some(truncated), None, &[]), (None, None));
        let elsewhere = Pair {
            ex: Function {
                offset: 0x9000,
                size: 8,
            },
            ..truncated
        };
        assert_eq!(place(Some(elsewhere), None, &[]), (None, None));
    }
}
