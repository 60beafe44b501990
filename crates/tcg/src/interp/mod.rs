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
//! BSWAP), [`atomic`] (XCHG with memory, CMPXCHG*, XADD), [`bcd`] (DAA..AAD, SALC),
//! [`x87`] (the FPU, FXSAVE/FXRSTOR) and [`sse`] (SSE/SSE2 and the MMX integer forms).
//! More families plug in through [`exec`].
//!
//! The IR front end ([`crate::lower`]) lowers many of these instructions itself (ROL/
//! ROR, LOOPE/LOOPNE, BSWAP, CBW..CQO, LEAVE, CLC..STD, LAHF/SAHF, BT*, BSF..POPCNT,
//! SHLD/SHRD, MUL/IMUL, DIV/IDIV, XCHG, XADD, CMPXCHG); their versions here serve only
//! the direct emitter (`QUERN_TCG=direct`), which sends everything outside its few
//! families here, and go when it does.
//!
//! Operand access goes through [`Operands`]: registers in the state, memory through the
//! CPU's linear access path (page walk, TLB fill, MMIO), immediates from the decoder.

pub mod atomic;
pub mod bcd;
pub mod bits;
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

/// Executes one instruction.
pub fn exec(cpu: &mut Cpu, ins: &Instruction) -> Result<Step> {
    if let Some(step) = system::exec(cpu, ins)? {
        return Ok(step);
    }
    if let Some(step) = misc::exec(cpu, ins)? {
        return Ok(step);
    }
    if let Some(step) = rotate::exec(cpu, ins)? {
        return Ok(step);
    }
    if let Some(step) = string::exec(cpu, ins)? {
        return Ok(step);
    }
    if let Some(step) = muldiv::exec(cpu, ins)? {
        return Ok(step);
    }
    if let Some(step) = bits::exec(cpu, ins)? {
        return Ok(step);
    }
    if let Some(step) = atomic::exec(cpu, ins)? {
        return Ok(step);
    }
    if let Some(step) = bcd::exec(cpu, ins)? {
        return Ok(step);
    }
    if let Some(step) = x87::exec(cpu, ins)? {
        return Ok(step);
    }
    if let Some(step) = sse::exec(cpu, ins)? {
        return Ok(step);
    }
    log::debug!("tcg: #UD for unimplemented {:?} at {:#x}", ins.code(), ins.ip());
    Err(Exception::ud())
}

/// Called from generated code: runs `*ins`. Returns 0 to continue the block, 1 to
/// leave it (RIP set), 2 for HLT; a fault is left in the state.
/// # Safety
/// Called only by generated code, with the `Cpu` it runs with (valid, not aliased).
pub unsafe extern "sysv64" fn helper_interp(cpu: *mut Cpu, ins: *const Instruction) -> u32 {
    // SAFETY: generated code passes its own Cpu (valid for the run) and a pointer into
    // the block's instruction table, which lives as long as the block.
    let (cpu, ins) = unsafe { (&mut *cpu, &*ins) };
    cpu.code_modified = false;
    crate::profile::count(&crate::profile::INTERP_CALLS);
    let _phase = crate::profile::Interpreting::start();
    let r = exec(cpu, ins);
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
