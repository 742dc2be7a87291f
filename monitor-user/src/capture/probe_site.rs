//! Where the uprobes on OpenSSL's reads and writes go, so that each costs one cheap trap.
//!
//! A uprobe replaces an instruction with a breakpoint. The kernel emulates a few instructions
//! after the trap (push of a register, nops, direct jumps and calls); any other it runs out of
//! line under single-step, a second trap. In a VM that second trap is the expensive part: on
//! the 6.18 VM this is built on, a count-only uprobe costs 1.1 µs on a `push` and 12.5 µs on
//! the `sub $0x18,%rsp` that `SSL_read` and `SSL_write` begin with (docs/performance.md).
//!
//! OpenSSL 1.1.1 and 3.x implement `SSL_read_ex(s, buf, num, readbytes)` as a call to an
//! internal `ssl_read_internal` with the same four arguments, and `SSL_read` as a call to the
//! same function with a length on its stack (writes alike). When the internal function begins
//! with an emulated instruction, the read and write programs for the `_ex` contract go there:
//! one probe covers both public functions, at a tenth of the cost. This is decided from the
//! machine code, never assumed from a version: anything that does not match exactly keeps
//! the probes on the public functions.

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
    Register,
};

/// The executable bytes that hold the functions, and the file offset of their first byte.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Text<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) offset: u64,
}

/// A public function: its file offset and size (from the symbol table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Function {
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

/// Most instructions looked at before the call of a wrapper.
const MAX_PROLOGUE: usize = 24;

/// The argument registers of the `_ex` contract, which a wrapper must hand on untouched.
const EX_ARGS: [Register; 4] = [Register::RDI, Register::RSI, Register::RDX, Register::RCX];

/// Where the `_ex` program goes, and whether the plain function still needs its own probes:
/// `Some((internal, plain_covered))` when the probes can go on the internal function.
pub(crate) fn internal(
    text: Text<'_>,
    ex: Function,
    plain: Option<Function>,
) -> Option<(u64, bool)> {
    let target = handoff(text, ex.offset)?;
    if !emulated_first(text, target) {
        return None;
    }
    let covered = plain.is_some_and(|p| first_call(text, p.offset) == Some(target));
    // A plain function that keeps its own probes must not reach the internal one some other
    // way, or its calls would be seen twice. Other callers are welcome: they read and write
    // with the same contract (OpenSSL's SSL BIO calls the internal functions directly, calls
    // the public probes never saw).
    let still_probed = plain.filter(|_| !covered);
    if still_probed.is_some_and(|p| reached_from(text, target, p)) {
        return None;
    }
    Some((target, covered))
}

/// The target of the first call `ex` makes, if every instruction before it leaves the four
/// argument registers alone and runs straight through.
fn handoff(text: Text<'_>, at: u64) -> Option<u64> {
    let mut decoder = decoder(text, at)?;
    let mut info = InstructionInfoFactory::new();
    for _ in 0..MAX_PROLOGUE {
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
        let writes = info.info(&insn).used_registers().iter().any(|r| {
            EX_ARGS.contains(&r.register().full_register())
                && !matches!(
                    r.access(),
                    OpAccess::Read | OpAccess::CondRead | OpAccess::None
                )
        });
        if writes {
            return None;
        }
    }
    None
}

/// The target of the first call `at` makes on its straight path (conditional branches are
/// its error exits), or `None` if it returns or jumps away first.
fn first_call(text: Text<'_>, at: u64) -> Option<u64> {
    let mut decoder = decoder(text, at)?;
    for _ in 0..MAX_PROLOGUE {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return None;
        }
        if insn.is_call_near() {
            return Some(insn.near_branch_target());
        }
        if !matches!(
            insn.flow_control(),
            FlowControl::Next | FlowControl::ConditionalBranch
        ) {
            return None;
        }
    }
    None
}

/// Whether the kernel emulates the instruction at `at` after a uprobe's trap (x86-64,
/// `arch/x86/kernel/uprobes.c`): a push of a register or a nop, as measured on 6.18. An older
/// kernel that runs a push out of line makes the probe cost what it costs on the public
/// function, no more.
fn emulated_first(text: Text<'_>, at: u64) -> bool {
    let Some(mut decoder) = decoder(text, at) else {
        return false;
    };
    let insn = decoder.decode();
    !insn.is_invalid()
        && match insn.mnemonic() {
            Mnemonic::Push => insn.op0_kind() == OpKind::Register,
            Mnemonic::Nop => true,
            _ => false,
        }
}

/// Whether a direct call or jump to `target` sits inside `function`. A byte scan, not a
/// decode: an `E8`/`E9`/`EB` inside another instruction that happens to point at `target`
/// only makes the answer more cautious.
fn reached_from(text: Text<'_>, target: u64, function: Function) -> bool {
    let start = function.offset.saturating_sub(text.offset);
    let end = start.saturating_add(function.size);
    let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
        return true;
    };
    let bytes = text.bytes;
    (start..end.min(bytes.len())).any(|i| {
        let (len, rel) = match bytes[i] {
            0xE8 | 0xE9 => match bytes.get(i + 1..i + 5) {
                Some(r) => (5, i64::from(i32::from_le_bytes([r[0], r[1], r[2], r[3]]))),
                None => return false,
            },
            0xEB => match bytes.get(i + 1) {
                Some(r) => (2, i64::from(*r as i8)),
                None => return false,
            },
            _ => return false,
        };
        let at = text.offset + i as u64;
        (at as i64).wrapping_add(len + rel) as u64 == target
    })
}

fn within(text: Text<'_>, at: u64) -> bool {
    (text.offset..text.offset + text.bytes.len() as u64).contains(&at)
}

/// A 64-bit decoder over `text` from file offset `at`, its instruction pointer in file
/// offsets (branch targets come out as file offsets too).
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

    /// OpenSSL 3.0.22's `SSL_read_ex` (at 0x100), `SSL_read` (at 0x120) and
    /// `ssl_read_internal` (at 0x200), as Debian 12 builds them.
    fn openssl_like(internal_first: &[u8], extra_caller: bool) -> Vec<u8> {
        let mut t = vec![0xCC; 0x300];
        let call = |t: &mut Vec<u8>, at: usize, to: usize| {
            t[at] = 0xE8;
            let rel = (to as i64 - (at as i64 + 5)) as i32;
            t[at + 1..at + 5].copy_from_slice(&rel.to_le_bytes());
        };
        // SSL_read_ex: sub $0x8,%rsp; call internal; ...; ret
        t[0x100..0x104].copy_from_slice(&[0x48, 0x83, 0xEC, 0x08]);
        call(&mut t, 0x104, 0x200);
        t[0x109] = 0xC3;
        // SSL_read: sub $0x18,%rsp; test %edx,%edx; js +0; mov %rsp,%rcx; movslq %edx,%rdx;
        // call internal; ret
        t[0x120..0x124].copy_from_slice(&[0x48, 0x83, 0xEC, 0x18]);
        t[0x124..0x126].copy_from_slice(&[0x85, 0xD2]);
        t[0x126..0x128].copy_from_slice(&[0x78, 0x00]);
        t[0x128..0x12B].copy_from_slice(&[0x48, 0x89, 0xE1]);
        t[0x12B..0x12E].copy_from_slice(&[0x48, 0x63, 0xD2]);
        call(&mut t, 0x12E, 0x200);
        t[0x133] = 0xC3;
        t[0x200..0x200 + internal_first.len()].copy_from_slice(internal_first);
        if extra_caller {
            call(&mut t, 0x280, 0x200);
        }
        t
    }

    const EX: Function = Function {
        offset: 0x1100,
        size: 0x20,
    };
    const PLAIN: Function = Function {
        offset: 0x1120,
        size: 0x20,
    };

    fn text(bytes: &[u8]) -> Text<'_> {
        Text {
            bytes,
            offset: 0x1000,
        }
    }

    #[test]
    fn probes_go_on_the_internal_function_when_its_first_instruction_is_emulated() {
        // push %r13
        let t = openssl_like(&[0x41, 0x55], false);
        assert_eq!(internal(text(&t), EX, Some(PLAIN)), Some((0x1200, true)));
        assert_eq!(internal(text(&t), EX, None), Some((0x1200, false)));
    }

    #[test]
    fn a_single_stepped_first_instruction_keeps_the_public_probes() {
        // sub $0x38,%rsp, then endbr64: neither is emulated.
        for first in [&[0x48, 0x83, 0xEC, 0x38][..], &[0xF3, 0x0F, 0x1E, 0xFA]] {
            let t = openssl_like(first, false);
            assert_eq!(internal(text(&t), EX, Some(PLAIN)), None, "{first:x?}");
        }
    }

    #[test]
    fn callers_outside_the_public_functions_do_not_matter() {
        // As OpenSSL's SSL BIO does.
        let t = openssl_like(&[0x41, 0x55], true);
        assert_eq!(internal(text(&t), EX, Some(PLAIN)), Some((0x1200, true)));
    }

    #[test]
    fn a_plain_function_reaching_it_later_keeps_every_probe_public() {
        let mut t = openssl_like(&[0x41, 0x55], false);
        // SSL_read first calls 0x240, then the internal function (a jmp at 0x134).
        let rel = (0x240i64 - (0x12E + 5)) as i32;
        t[0x12F..0x133].copy_from_slice(&rel.to_le_bytes());
        t[0x134] = 0xE9;
        let rel = (0x200i64 - (0x134 + 5)) as i32;
        t[0x135..0x139].copy_from_slice(&rel.to_le_bytes());
        assert_eq!(internal(text(&t), EX, Some(PLAIN)), None);
    }

    #[test]
    fn a_wrapper_that_changes_an_argument_is_not_followed() {
        let mut t = openssl_like(&[0x41, 0x55], false);
        // SSL_read_ex's first instruction becomes mov %rsp,%rcx: the fourth argument changed.
        t[0x100..0x104].copy_from_slice(&[0x48, 0x89, 0xE1, 0x90]);
        assert_eq!(internal(text(&t), EX, Some(PLAIN)), None);
    }

    #[test]
    fn a_plain_function_calling_elsewhere_keeps_its_own_probes() {
        let mut t = openssl_like(&[0x41, 0x55], false);
        // SSL_read's call now goes to 0x240.
        let rel = (0x240i64 - (0x12E + 5)) as i32;
        t[0x12F..0x133].copy_from_slice(&rel.to_le_bytes());
        assert_eq!(internal(text(&t), EX, Some(PLAIN)), Some((0x1200, false)));
    }

    #[test]
    fn garbage_and_out_of_range_offsets_are_no_answer() {
        let t = vec![0xFF; 64];
        assert_eq!(internal(text(&t), EX, Some(PLAIN)), None);
        let tiny = [0xE8];
        let f = Function {
            offset: 0x1000,
            size: 1,
        };
        assert_eq!(internal(text(&tiny), f, None), None);
    }
}
