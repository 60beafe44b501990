//! The instruction interpreter: Rust semantics for every instruction the translator
//! does not emit inline (see `translate`'s table). Generated code calls
//! [`helper_interp`] with the decoded instruction; each instruction's semantics live in
//! exactly one place, here or in an inline family.
//!
//! Families, one file each: [`system`] (I/O, HLT, interrupts flags, far control
//! transfers, segment and control registers, descriptor tables, CPUID, RDTSC, MSRs),
//! [`misc`] (flag instructions, sign extensions, LEAVE, XLAT, PUSHF/POPF, BOUND, ARPL,
//! ...), [`rotate`] (rotates, double shifts), [`string`] (MOVS..SCAS, INS/OUTS, REP),
//! [`muldiv`] (MUL, IMUL, DIV, IDIV), [`bits`] (BT*, BSF/BSR, TZCNT/LZCNT, POPCNT,
//! BSWAP), [`locked`] (read-modify-writes of memory as host atomics: the LOCK-prefixed
//! operations, and XCHG, XADD, CMPXCHG, CMPXCHG8B/16B on memory), [`atomic`] (XCHG,
//! XADD, CMPXCHG between registers), [`bcd`] (DAA..AAD, SALC),
//! [`x87`] (the FPU, FXSAVE/FXRSTOR) and [`sse`] (SSE/SSE2 and the MMX integer forms).
//! More families plug in through [`exec`].
//!
//! The IR front end ([`crate::lower`]) lowers many of these instructions itself (ROL/
//! ROR, LOOPE/LOOPNE, BSWAP, CBW..CQO, LEAVE, CLC..STD, LAHF/SAHF, BT*, BSF..POPCNT,
//! SHLD/SHRD, MUL/IMUL, DIV/IDIV, XCHG, XADD, CMPXCHG, most SSE/SSE2). Their versions
//! here are reached only by the forms the front end still hands over (e.g. 16-bit BSWAP, SSE
//! with an exception unmasked or SSE disabled, CLI above CPL 0, PUSHF in virtual-8086
//! mode) and by tests; they are to go as the front end takes those forms too, so that
//! each instruction's semantics live in one place.
//!
//! Operand access goes through [`Operands`]: registers in the state, memory through the
//! CPU's linear access path (page walk, TLB fill, MMIO), immediates from the decoder.

pub mod atomic;
pub mod bcd;
pub mod bits;
pub mod f80;
pub mod locked;
pub mod misc;
pub mod muldiv;
pub mod rotate;
pub mod sse;
pub mod string;
pub mod system;
#[cfg(test)]
pub(crate) mod testutil;
pub mod x87;

use iced_x86::{Instruction, OpKind, Register};

use crate::cpu::{Cpu, Exception, Result};
use crate::flags::{mask, CcKind, CcOp, Width};
use crate::state::{CS, DS, ES, FS, GS, SS};
use crate::translate::{address_bits, gpr, seg_index};

/// What an interpreted instruction did to control flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Fall through to the next instruction in the block.
    Next,
    /// RIP has been set (branch, mode change): leave the block.
    Jump,
    /// HLT: RIP is past it; wait for an interrupt.
    Halt,
}

/// Register/memory/immediate access for one decoded instruction.
pub struct Operands<'a> {
    pub cpu: &'a mut Cpu,
    pub ins: &'a Instruction,
}

impl Operands<'_> {
    /// Width in bytes of operand `i` (immediates take operand 0's width).
    pub fn width(&self, i: u32) -> Width {
        match self.ins.op_kind(i) {
            OpKind::Register => self.ins.op_register(i).size() as Width,
            OpKind::Memory => self.ins.memory_size().size().max(1) as Width,
            OpKind::Immediate8 | OpKind::Immediate8_2nd => 1,
            OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
            OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
            _ if i > 0 => self.width(0),
            _ => 8,
        }
    }

    /// Linear address of the memory operand.
    pub fn linear(&self) -> u64 {
        self.seg_linear(seg_index(self.ins.memory_segment()), self.offset())
    }

    /// The memory operand's effective address (offset in its segment), wrapped to the
    /// address size.
    pub fn offset(&self) -> u64 {
        let ins = self.ins;
        let bits = address_bits(ins, self.cpu.state.code_bits());
        let base = ins.memory_base();
        let ea = if base == Register::RIP || base == Register::EIP {
            ins.memory_displacement64()
        } else {
            let mut a = ins.memory_displacement64();
            if base != Register::None {
                a = a.wrapping_add(self.cpu.state.gpr[gpr(base).0]);
            }
            if ins.memory_index() != Register::None {
                a = a.wrapping_add(self.cpu.state.gpr[gpr(ins.memory_index()).0] * ins.memory_index_scale() as u64);
            }
            a
        };
        ea & addr_mask(bits)
    }

    /// Segment base + offset, wrapped as the mode requires.
    pub fn seg_linear(&self, seg: usize, offset: u64) -> u64 {
        let s = &self.cpu.state;
        let base = if s.long_mode() && !matches!(seg, FS | GS) { 0 } else { s.seg[seg].base };
        self.cpu.wrap_linear(base.wrapping_add(offset))
    }

    pub fn read(&mut self, i: u32) -> Result<u64> {
        let w = self.width(i);
        match self.ins.op_kind(i) {
            OpKind::Register => Ok(read_reg(self.cpu, self.ins.op_register(i))),
            OpKind::Memory => {
                let a = self.linear();
                self.cpu.read_n(a, w)
            }
            _ => Ok(self.ins.immediate(i) & mask(w)),
        }
    }

    pub fn write(&mut self, i: u32, v: u64) -> Result<()> {
        let w = self.width(i);
        match self.ins.op_kind(i) {
            OpKind::Register => {
                write_reg(self.cpu, self.ins.op_register(i), v);
                Ok(())
            }
            OpKind::Memory => {
                let a = self.linear();
                self.cpu.write_n(a, v, w)
            }
            _ => Err(Exception::ud()),
        }
    }
}

/// The address size an instruction uses for its implicit operands (string
/// instructions, LOOP, XLAT).
pub fn address_size_of(ins: &Instruction, code_bits: u32) -> u32 {
    // Implicit memory operands name their address register (and so the size an 0x67
    // prefix selected) in the operand kind.
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => return 16,
            OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI => return 32,
            OpKind::MemorySegRSI | OpKind::MemorySegRDI | OpKind::MemoryESRDI => return 64,
            _ => {}
        }
    }
    match ins.op_code().address_size() {
        16 => 16,
        32 => 32,
        64 => 64,
        _ if ins.op_count() > 0 && (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory) => {
            address_bits(ins, code_bits)
        }
        _ => code_bits,
    }
}

pub fn addr_mask(bits: u32) -> u64 {
    match bits {
        16 => 0xffff,
        32 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Reads a general register by iced name (AH..BH, 8/16/32/64-bit views).
pub fn read_reg(cpu: &Cpu, r: Register) -> u64 {
    if r.is_segment_register() {
        return u64::from(cpu.state.seg[seg_index(r)].selector);
    }
    let (n, hi) = gpr(r);
    let v = cpu.state.gpr[n];
    if hi {
        (v >> 8) & 0xff
    } else {
        v & mask(r.size() as Width)
    }
}

/// Writes a general register with x86's merge rules.
pub fn write_reg(cpu: &mut Cpu, r: Register, v: u64) {
    let (n, hi) = gpr(r);
    let old = cpu.state.gpr[n];
    cpu.state.gpr[n] = match (r.size(), hi) {
        (1, true) => (old & !0xff00) | ((v & 0xff) << 8),
        (1, false) => (old & !0xff) | (v & 0xff),
        (2, _) => (old & !0xffff) | (v & 0xffff),
        (4, _) => v & 0xffff_ffff,
        _ => v,
    };
}

/// Stack push/pop of `w` bytes through SS, honoring the stack width.
pub fn push(cpu: &mut Cpu, v: u64, w: Width) -> Result<()> {
    let sw = stack_width(cpu);
    let sp = cpu.state.gpr[4].wrapping_sub(w as u64) & addr_mask(sw as u32 * 8);
    let ops = Operands { cpu, ins: &Instruction::default() };
    let a = ops.seg_linear(SS, sp);
    cpu.write_n(a, v, w)?;
    set_sp(cpu, sp, sw);
    Ok(())
}

pub fn pop(cpu: &mut Cpu, w: Width) -> Result<u64> {
    let sw = stack_width(cpu);
    let sp = cpu.state.gpr[4] & addr_mask(sw as u32 * 8);
    let ops = Operands { cpu, ins: &Instruction::default() };
    let a = ops.seg_linear(SS, sp);
    let v = cpu.read_n(a, w)?;
    set_sp(cpu, sp.wrapping_add(w as u64), sw);
    Ok(v)
}

pub fn stack_width(cpu: &Cpu) -> Width {
    if cpu.state.long_mode() && cpu.state.seg[CS].long() {
        8
    } else if cpu.state.seg[SS].db() {
        4
    } else {
        2
    }
}

fn set_sp(cpu: &mut Cpu, sp: u64, sw: Width) {
    let r = match sw {
        2 => Register::SP,
        4 => Register::ESP,
        _ => Register::RSP,
    };
    write_reg(cpu, r, sp);
}

/// Records a lazy-flag result from Rust code.
pub fn set_cc(cpu: &mut Cpu, kind: CcKind, w: Width, dst: u64, src: u64, src2: u64) {
    cpu.state.cc_op = CcOp::new(kind, w).0;
    cpu.state.cc_dst = dst & mask(w);
    cpu.state.cc_src = src;
    cpu.state.cc_src2 = src2;
}

/// An interpreter family's entry point: runs the instruction if it belongs to the
/// family, `Ok(None)` if it does not (having done nothing).
pub type Handler = fn(&mut Cpu, &Instruction) -> Result<Option<Step>>;

/// A family's membership test: whether its entry point takes an instruction.
type Member = fn(&Instruction) -> bool;

/// The families in the order [`exec`] tries them, each with its membership test.
const FAMILIES: [(Member, Handler); 11] = [
    // First: a read-modify-write of memory is atomic whichever family its operation
    // is in.
    (locked::handles, locked::exec),
    (system::handles, system::exec),
    (misc::handles, misc::exec),
    (rotate::handles, rotate::exec),
    (string::handles, string::exec),
    (muldiv::handles, muldiv::exec),
    (bits::handles, bits::exec),
    (atomic::handles, atomic::exec),
    (bcd::handles, bcd::exec),
    (x87::handles, x87::exec),
    (sse::handles, sse::exec),
];

/// The handler of `ins`, found once (at translation) rather than at every execution:
/// the family [`exec`] would reach by trying each in turn, or one that raises #UD
/// when none implements it. Run it with [`exec_resolved`] or keep it in a
/// [`Resolved`] for [`helper_interp_resolved`].
pub fn resolve(ins: &Instruction) -> Handler {
    FAMILIES.iter().find(|f| (f.0)(ins)).map_or(undefined as Handler, |f| f.1)
}

fn undefined(_cpu: &mut Cpu, ins: &Instruction) -> Result<Option<Step>> {
    log::debug!("tcg: #UD for unimplemented {:?} at {:#x}", ins.code(), ins.ip());
    Err(Exception::ud())
}

/// Executes one instruction, trying the families in turn.
pub fn exec(cpu: &mut Cpu, ins: &Instruction) -> Result<Step> {
    for (_, run) in FAMILIES {
        if let Some(step) = run(cpu, ins)? {
            return Ok(step);
        }
    }
    undefined(cpu, ins).map(|_| Step::Next)
}

/// Executes one instruction with the handler [`resolve`] gave for it.
pub fn exec_resolved(cpu: &mut Cpu, ins: &Instruction, handler: Handler) -> Result<Step> {
    match handler(cpu, ins)? {
        Some(step) => Ok(step),
        // Only if a membership test claimed more than its family runs (the tests
        // check they do not): the search in order stays right.
        None => exec(cpu, ins),
    }
}

/// A decoded instruction with its handler, as a block's instruction table holds it
/// for [`helper_interp_resolved`].
#[derive(Clone, Copy)]
pub struct Resolved {
    pub ins: Instruction,
    pub handler: Handler,
}

impl Resolved {
    pub fn new(ins: Instruction) -> Self {
        Resolved { handler: resolve(&ins), ins }
    }
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved").field("ins", &self.ins).finish_non_exhaustive()
    }
}

/// Called from generated code: runs `*ins`. Returns 0 to continue the block, 1 to
/// leave it (RIP set), 2 for HLT; a fault is left in the state.
/// # Safety
/// Called only by generated code, with the `Cpu` it runs with (valid, not aliased).
pub unsafe extern "C" fn helper_interp(cpu: *mut Cpu, ins: *const Instruction) -> u32 {
    // SAFETY: generated code passes its own Cpu (valid for the run) and a pointer into
    // the block's instruction table, which lives as long as the block.
    let (cpu, ins) = unsafe { (&mut *cpu, &*ins) };
    cpu.code_modified = false;
    crate::profile::count(&crate::profile::INTERP_CALLS);
    let _phase = crate::profile::Interpreting::start();
    let r = exec(cpu, ins);
    helper_result(cpu, ins, r)
}

/// [`helper_interp`] for an instruction resolved at translation: goes straight to its
/// family. Same results.
/// # Safety
/// Called only by generated code, with the `Cpu` it runs with (valid, not aliased) and
/// a pointer into the block's table of [`Resolved`] instructions.
pub unsafe extern "C" fn helper_interp_resolved(cpu: *mut Cpu, r: *const Resolved) -> u32 {
    // SAFETY: as in helper_interp; the table lives as long as the block.
    let (cpu, r) = unsafe { (&mut *cpu, &*r) };
    cpu.code_modified = false;
    crate::profile::count(&crate::profile::INTERP_CALLS);
    crate::profile::count_interp(r.ins.mnemonic());
    let _phase = crate::profile::Interpreting::start();
    let res = exec_resolved(cpu, &r.ins, r.handler);
    helper_result(cpu, &r.ins, res)
}

/// The interpreter helpers' common tail: memory-map catch-up and the return code.
fn helper_result(cpu: &mut Cpu, ins: &Instruction, r: Result<Step>) -> u32 {
    // Port and MMIO writes run here; one may have switched a memory view.
    cpu.sync_memory_map();
    match r {
        Ok(Step::Next) if cpu.code_modified => {
            cpu.state.rip = ins.next_ip();
            1
        }
        Ok(Step::Next) => 0,
        Ok(Step::Jump) => 1,
        Ok(Step::Halt) => 2,
        Err(e) => {
            cpu.raise(e);
            1
        }
    }
}

/// The segment registers in encoding order, for tables.
pub const SEGS: [usize; 6] = [ES, CS, SS, DS, FS, GS];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use iced_x86::{Decoder, DecoderOptions};

    use super::*;

    /// What the families' membership can depend on besides the code: the kinds of
    /// operands and the classes of their registers.
    fn shape(bits: u32, ins: &Instruction) -> (u32, iced_x86::Code, Vec<(u32, u8)>) {
        let class = |r: Register| match r {
            _ if r.is_segment_register() => 1,
            _ if r.is_cr() => 2,
            _ if r.is_dr() => 3,
            _ if r.is_mm() => 4,
            _ if r.is_xmm() => 5,
            _ if r.is_gpr() => 6,
            _ => 7,
        };
        let ops = (0..ins.op_count())
            .map(|i| {
                let k = ins.op_kind(i);
                (k as u32, if k == OpKind::Register { class(ins.op_register(i)) } else { 0 })
            })
            .collect();
        (bits, ins.code(), ops)
    }

    /// Over a corpus of every opcode of the one-, two- and three-byte maps with the
    /// mandatory prefixes, REX.W and VEX, with ModRM forms covering every /reg and
    /// every x87 register form, in each mode: the family `resolve` names is the first
    /// one whose `exec` does not decline the instruction (run on a scratch CPU; a
    /// panic counts as taking it). So the membership tests hold exactly where it
    /// matters: none of the families before says yes, the one `exec` reaches does.
    #[test]
    fn resolve_finds_the_family_exec_reaches() {
        let mut seen = HashSet::new();
        let mut wrong = Vec::new();
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        for bits in [16u32, 32, 64] {
            let mut prefixes: Vec<&[u8]> = vec![&[], &[0x66], &[0xf2], &[0xf3]];
            if bits == 64 {
                prefixes.extend([&[0x48][..], &[0x66, 0x48], &[0xf3, 0x48]]);
            }
            if bits != 16 {
                prefixes.push(&[0xc5, 0xf8]);
            }
            for prefix in prefixes {
                for map in [&[][..], &[0x0f], &[0x0f, 0x38], &[0x0f, 0x3a]] {
                    for op in 0..=255u8 {
                        let modrms: Vec<u8> = if map.is_empty() && (0xd8..=0xdf).contains(&op) {
                            (0..=255).collect()
                        } else {
                            (0..8).flat_map(|r| [0xc0 | r << 3, r << 3, 0xc1 | r << 3]).collect()
                        };
                        for modrm in modrms {
                            let mut bytes = prefix.to_vec();
                            bytes.extend_from_slice(map);
                            bytes.extend([op, modrm]);
                            bytes.extend([0u8; 12]);
                            let ins = Decoder::with_ip(bits, &bytes, 0x1000, DecoderOptions::NONE).decode();
                            if !seen.insert(shape(bits, &ins)) {
                                continue;
                            }
                            let mut cpu = testutil::cpu(bits);
                            let reached = FAMILIES.iter().position(|f| {
                                !matches!(catch_unwind(AssertUnwindSafe(|| (f.1)(&mut cpu, &ins))), Ok(Ok(None)))
                            });
                            let resolved = FAMILIES.iter().position(|f| (f.0)(&ins));
                            if reached != resolved {
                                wrong.push(format!(
                                    "{bits}-bit {:?} {bytes:02x?}: exec {reached:?}, resolve {resolved:?}",
                                    ins.code()
                                ));
                            }
                        }
                    }
                }
            }
        }
        std::panic::set_hook(hook);
        assert!(seen.len() > 3000, "a corpus of {} shapes", seen.len());
        assert!(wrong.is_empty(), "{} mismatches:\n{}", wrong.len(), wrong.join("\n"));
    }

    #[test]
    fn resolved_helper_runs_the_instruction() {
        let mut cpu = testutil::cpu(64);
        cpu.state.gpr[0] = 0x1234_5678;
        let bytes = testutil::asm(64, |a| a.bswap(iced_x86::code_asm::eax));
        let r = Resolved::new(testutil::decode(&cpu, &bytes));
        // SAFETY: a valid Cpu and instruction, as generated code passes them.
        assert_eq!(unsafe { helper_interp_resolved(&mut *cpu, &r) }, 0);
        assert_eq!(cpu.state.gpr[0], 0x7856_3412);
        // An instruction no family implements raises #UD either way.
        let bytes = [0x0f, 0x0b]; // ud2
        let r = Resolved::new(testutil::decode(&cpu, &bytes));
        assert_eq!(exec_resolved(&mut cpu, &r.ins, r.handler), Err(Exception::ud()));
    }
}
