//! The front end: guest instructions → IR, one lowering per instruction.
//!
//! [`lower_block`] walks a decoded block and hands each instruction to its family;
//! what no family lowers runs in the interpreter ([`crate::interp`]) through
//! [`Op::Interp`]. To add an instruction, add it to one family's `lower` (and to the
//! routing in [`Lower::one`]); its semantics then serve every backend.
//!
//! | family | instructions |
//! | --- | --- |
//! | [`int`] | MOV, MOVZX, MOVSX(D), LEA, XCHG, XADD, CMPXCHG, NOP, BSWAP, ADD..CMP, TEST, INC, DEC, NEG, NOT, IMUL (2/3 operands), SHL/SHR/SAR, ROL/ROR, SHLD/SHRD, CBW..CQO, CLC/STC/CMC, CLD/STD, LAHF/SAHF |
//! | [`muldiv`] | MUL, IMUL (1 operand), DIV, IDIV |
//! | [`bits`] | BT, BTS, BTR, BTC, BSF, BSR, TZCNT, LZCNT, POPCNT |
//! | [`flow`] | PUSH, POP, LEAVE, CALL, RET, JMP, Jcc, LOOP, JrCXZ, SETcc, CMOVcc |
//! | [`sse`] | SSE/SSE2 on XMM registers: moves, logic, integer arithmetic, compares, shifts, shuffles, packs, unpacks; floating-point arithmetic, compares, COMIS/UCOMIS, conversions |
//! | [`x87`] | FLD, FST(P), FILD, FIST(P), FISTTP, FLDZ, FLD1, FXCH, FCHS, FABS, FSQRT, FADD..FDIVR (and P, I forms), FCOMI, FUCOMI (and P) |
//!
//! Operand values read with [`Lower::read`] may carry garbage above their width (a
//! register's upper bits): IR operations of a width ignore it; code that needs the
//! exact value zero-extends.

mod bits;
pub mod flags;
mod flow;
mod int;
mod muldiv;
mod sse;
pub mod x87;

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use crate::interp::Resolved;

use crate::flags::Width;
use crate::ir::{Bin, Block, Global, Helper, Op, Un, Val};
use crate::state::{DS, ES, FS, GS, SS};
use crate::translate::{address_bits, gpr, seg_index, BlockMode};

pub use flags::Flags;

/// Lowering state for one block.
pub struct Lower<'a> {
    pub b: Block,
    pub mode: BlockMode,
    pub flags: Flags,
    /// RIP of the block's first instruction (a branch there is a loop).
    pub block_rip: u64,
    pub ins: &'a Instruction,
    /// The instructions left to the interpreter, each with its handler resolved; the
    /// block's code holds their addresses (boxed: they stay put).
    #[allow(clippy::vec_box)]
    interpreted: Vec<Box<Resolved>>,
    pub ip: u64,
    pub next: u64,
    /// The current instruction stores to memory: a store onto translated code leaves
    /// the block after it, so its flags must then be in the state.
    stored: bool,
    /// The x87 stack as translation knows it ([`x87`]); None: x87 instructions run in
    /// the interpreter.
    pub x87: Option<x87::Stack>,
}

/// Whether the block goes on after an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    End,
}

/// Lowers the decoded block `insns`. Also returns the instructions it leaves to the
/// interpreter, which must live as long as the block's code.
pub fn lower_block(insns: &[Instruction], mode: BlockMode) -> (Block, Vec<Box<Resolved>>) {
    let start = insns.first().map_or(0, |i| i.ip());
    let mut l = Lower {
        b: Block::new(),
        mode,
        flags: Flags::default(),
        block_rip: if mode.single { u64::MAX } else { start },
        ins: &insns[0],
        interpreted: Vec::new(),
        ip: 0,
        next: 0,
        stored: false,
        x87: mode.x87,
    };
    for ins in insns {
        l.ins = ins;
        l.ip = ins.ip();
        l.next = ins.next_ip();
        l.b.insn(l.ip, l.next);
        l.stored = false;
        let flow = if ins.code() == Code::INVALID { l.interp() } else { l.one() };
        if flow == Flow::End {
            return (l.b, l.interpreted);
        }
        if l.stored {
            l.flags.sync(&mut l.b);
        }
    }
    let next = insns.last().map_or(start, |i| i.next_ip());
    l.exit(Op::Exit { rip: next });
    (l.b, l.interpreted)
}

impl Lower<'_> {
    /// Routes the current instruction to its family.
    fn one(&mut self) -> Flow {
        use Mnemonic::*;
        let ins = self.ins;
        let special = (0..ins.op_count()).any(|i| {
            ins.op_kind(i) == OpKind::Register && {
                let r = ins.op_register(i);
                r.is_segment_register() || r.is_cr() || r.is_dr()
            }
        });
        if special || self.mode.atomic && crate::interp::locked::needs_host_atomic(ins) {
            return self.interp();
        }
        match ins.mnemonic() {
            Mov | Movzx | Movsx | Movsxd | Lea | Nop | Bswap | Add | Or | Adc | Sbb | And | Sub | Xor | Cmp | Test
            | Inc | Dec | Neg | Not | Shl | Sal | Shr | Sar | Rol | Ror | Shld | Shrd | Xchg | Xadd | Cmpxchg | Cbw
            | Cwde | Cdqe | Cwd | Cdq | Cqo | Clc | Stc | Cmc | Cld | Std | Lahf | Sahf => int::lower(self),
            Imul if ins.op_count() >= 2 => int::lower(self),
            Mul | Imul | Div | Idiv => muldiv::lower(self),
            Bt | Bts | Btr | Btc | Bsf | Bsr | Tzcnt | Lzcnt | Popcnt => bits::lower(self),
            // MFENCE orders stores before later loads, which x86's own memory order
            // does not: with other vCPUs running, the interpreter's host fence does.
            Mfence if self.mode.atomic => self.interp(),
            // Prefetches have nothing to fetch; the other fences order nothing x86's
            // order (kept by the host's, see `docs/tcg.md`) does not already.
            Pause | Lfence | Sfence | Mfence | Prefetchnta | Prefetcht0 | Prefetcht1 | Prefetcht2 | Prefetchw => {
                Flow::Continue
            }
            // CLI at CPL 0 cannot fault (IOPL only matters above it).
            Cli if self.mode.cpl == 0 => {
                let e = self.b.get(Global::Eflags);
                let e = self.b.bin_k(Bin::And, 8, e, !quern_core::regs::flags::IF);
                self.b.set(Global::Eflags, e);
                Flow::Continue
            }
            // STI at CPL 0 cannot fault either.
            Sti if self.mode.cpl == 0 => {
                let waiting = self.b.call(Helper::Sti);
                let e = self.b.get(Global::Eflags);
                let e = self.b.bin_k(Bin::Or, 8, e, quern_core::regs::flags::IF);
                self.b.set(Global::Eflags, e);
                // With an interrupt waiting, on to the next block's head (which
                // returns to the run loop: the helper asked for it).
                let t = self.b.nonzero(8, waiting);
                self.exit(Op::ExitIf { t, rip: self.next });
                Flow::Continue
            }
            // CR4.TSD is not modelled: RDTSC never faults.
            Rdtsc => {
                let t = self.b.call(Helper::Tsc);
                let lo = self.b.un(Un::Zext, 4, t);
                let hi = self.b.bin_k(Bin::Shr, 8, t, 32);
                self.b.set(Global::Gpr(0), lo);
                self.b.set(Global::Gpr(2), hi);
                Flow::Continue
            }
            // PUSHF faults only in virtual-8086 mode (CPL 3 outside long mode).
            Pushf | Pushfd | Pushfq if self.mode.long || self.mode.cpl < 3 => flow::lower(self),
            Push | Pop | Call | Ret | Jmp | Loop | Loope | Loopne | Jcxz | Jecxz | Jrcxz | Leave => flow::lower(self),
            _ if crate::translate::is_jcc(ins) => flow::lower(self),
            m if is_setcc(m) || is_cmovcc(m) => flow::lower(self),
            _ if sse::is_sse(ins) && crate::backend::caps().vector => sse::lower(self),
            m if x87::is_x87(m) => x87::lower(self),
            _ => self.interp(),
        }
    }

    /// Runs the instruction in the interpreter; ends the block where it must.
    pub fn interp(&mut self) -> Flow {
        self.flags.sync(&mut self.b);
        let r = Box::new(Resolved::new(*self.ins));
        self.b.push(Op::Interp { ins: &*r as *const Resolved as usize });
        self.interpreted.push(r);
        self.flags.in_state();
        // What the interpreter did to the x87 stack, as far as the lowering can tell.
        self.x87 = self.x87.and_then(|s| x87::after_interp(self.ins, s));
        if crate::translate::ends_block(self.ins) {
            self.b.push(Op::ExitToLoop { rip: self.next });
            return Flow::End;
        }
        Flow::Continue
    }

    /// Emits an operation that needs the whole state, making the flags current first.
    pub fn exit(&mut self, op: Op) {
        self.flags.sync(&mut self.b);
        self.b.push(op);
    }

    /// Width in bytes of operand `i`; an immediate takes its destination's.
    pub fn width(&self, i: u32) -> Width {
        match self.ins.op_kind(i) {
            OpKind::Register => self.ins.op_register(i).size() as Width,
            OpKind::Memory => self.ins.memory_size().size().max(1) as Width,
            OpKind::Immediate8 | OpKind::Immediate8_2nd if i == 0 => 1,
            OpKind::Immediate16 | OpKind::Immediate8to16 if i == 0 => 2,
            OpKind::Immediate32 | OpKind::Immediate8to32 if i == 0 => 4,
            _ if i == 0 => 8,
            _ => self.width(0),
        }
    }

    /// A guest register's value (garbage above its width; AH..BH shifted down).
    pub fn reg(&mut self, r: Register) -> Val {
        let (n, hi) = gpr(r);
        let v = self.b.get(Global::Gpr(n as u8));
        if hi {
            self.b.bin_k(Bin::Shr, 8, v, 8)
        } else {
            v
        }
    }

    /// Writes a guest register with x86's merge rules: 8/16-bit writes keep the other
    /// bits, 32-bit writes clear the upper half.
    pub fn set_reg(&mut self, r: Register, v: Val) {
        let (n, hi) = gpr(r);
        self.set_gpr(n, r.size() as Width, hi, v);
    }

    /// Writes `w` bytes of general register `n` (`hi`: AH..BH).
    pub fn set_gpr(&mut self, n: usize, w: Width, hi: bool, v: Val) {
        let new = self.merge_gpr(n, w, hi, v);
        self.b.set(Global::Gpr(n as u8), new);
    }

    /// General register `n`'s whole value after a write of `w` bytes of `v` to it
    /// (`hi`: AH..BH), without writing it.
    pub fn merge_gpr(&mut self, n: usize, w: Width, hi: bool, v: Val) -> Val {
        let g = Global::Gpr(n as u8);
        match (w, hi) {
            (8, _) => v,
            (4, _) => self.b.un(Un::Zext, 4, v),
            (1, true) => {
                let old = self.b.get(g);
                let kept = self.b.bin_k(Bin::And, 8, old, !0xff00);
                let low = self.b.un(Un::Zext, 1, v);
                let moved = self.b.bin_k(Bin::Shl, 8, low, 8);
                self.b.bin(Bin::Or, 8, kept, moved)
            }
            _ => {
                let m = crate::flags::mask(w);
                let old = self.b.get(g);
                let kept = self.b.bin_k(Bin::And, 8, old, !m);
                let low = self.b.un(Un::Zext, w, v);
                self.b.bin(Bin::Or, 8, kept, low)
            }
        }
    }

    /// Reads operand `i`: register, memory (loads) or immediate.
    pub fn read(&mut self, i: u32) -> Val {
        let w = self.width(i);
        match self.ins.op_kind(i) {
            OpKind::Register => self.reg(self.ins.op_register(i)),
            OpKind::Memory => {
                let a = self.ea();
                self.load(w, a)
            }
            _ => {
                let v = self.ins.immediate(i) & crate::flags::mask(w);
                self.b.konst(v)
            }
        }
    }

    /// Writes operand `i` (register or memory at `addr`, computed by the caller when
    /// it also read the operand).
    pub fn write(&mut self, i: u32, v: Val, addr: Option<Val>) {
        match self.ins.op_kind(i) {
            OpKind::Register => self.set_reg(self.ins.op_register(i), v),
            _ => {
                let w = self.width(i);
                let a = match addr {
                    Some(a) => a,
                    None => self.ea(),
                };
                self.store(w, a, v);
            }
        }
    }

    pub fn load(&mut self, w: Width, addr: Val) -> Val {
        self.flags.sync(&mut self.b);
        self.b.load(w, addr)
    }

    pub fn store(&mut self, w: Width, addr: Val, v: Val) {
        self.flags.sync(&mut self.b);
        self.stored = true;
        self.b.store(w, addr, v);
    }

    /// The memory operand's linear address.
    pub fn ea(&mut self) -> Val {
        let off = self.effective_address();
        let seg = seg_index(self.ins.memory_segment());
        self.add_segment(seg, off)
    }

    /// The memory operand's offset (base + index*scale + displacement, wrapped to the
    /// address size), without a segment base (LEA).
    pub fn effective_address(&mut self) -> Val {
        let ins = self.ins;
        let base = ins.memory_base();
        let index = ins.memory_index();
        let asize = (address_bits(ins, self.mode.bits) / 8) as Width;
        let mut acc: Option<Val> = None;
        if base == Register::RIP || base == Register::EIP {
            return self.b.konst(ins.memory_displacement64() & crate::flags::mask(asize));
        }
        if base != Register::None {
            acc = Some(self.b.get(Global::Gpr(gpr(base).0 as u8)));
        }
        if index != Register::None {
            let x = self.b.get(Global::Gpr(gpr(index).0 as u8));
            let scale = ins.memory_index_scale();
            let x = if scale > 1 { self.b.bin_k(Bin::Shl, 8, x, scale.trailing_zeros() as u64) } else { x };
            acc = Some(match acc {
                Some(a) => self.b.bin(Bin::Add, 8, a, x),
                None => x,
            });
        }
        let disp = ins.memory_displacement64();
        match acc {
            Some(a) => self.b.bin_k(Bin::Add, asize, a, disp),
            None => self.b.konst(disp & crate::flags::mask(asize)),
        }
    }

    /// Adds segment `seg`'s base where the mode requires it; wraps to 32 bits outside
    /// long mode.
    pub fn add_segment(&mut self, seg: usize, off: Val) -> Val {
        let needs_base = match seg {
            FS | GS => true,
            _ if self.mode.long => false,
            DS | ES | SS => !self.mode.flat,
            _ => true,
        };
        if !needs_base {
            return off;
        }
        let base = self.b.get(Global::SegBase(seg as u8));
        let w = if self.mode.long { 8 } else { 4 };
        self.b.bin(Bin::Add, w, base, off)
    }

    /// The stack's linear address for offset `sp` (already wrapped to the stack width).
    pub fn stack_addr(&mut self, sp: Val) -> Val {
        self.add_segment(SS, sp)
    }
}

pub fn is_setcc(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Seta | Setae
            | Setb
            | Setbe
            | Sete
            | Setne
            | Setg
            | Setge
            | Setl
            | Setle
            | Seto
            | Setno
            | Setp
            | Setnp
            | Sets
            | Setns
    )
}

pub fn is_cmovcc(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Cmova
            | Cmovae
            | Cmovb
            | Cmovbe
            | Cmove
            | Cmovne
            | Cmovg
            | Cmovge
            | Cmovl
            | Cmovle
            | Cmovo
            | Cmovno
            | Cmovp
            | Cmovnp
            | Cmovs
            | Cmovns
    )
}

/// The condition's nibble as in the Jcc/SETcc/CMOVcc opcodes.
pub fn nibble(cc: iced_x86::ConditionCode) -> u8 {
    cc as u8 - 1
}
