//! The x87 instructions compiled code uses most, inline: FLD, FST(P), FILD, FIST(P),
//! FISTTP, FLDZ, FLD1, FXCH, FCHS, FABS, FSQRT, FADD..FDIVR (register, memory and
//! integer forms, with their P forms), FCOMI, FUCOMI (and P).
//!
//! A block is translated for the x87 stack it started with when it was translated
//! ([`BlockMode::x87`]): the control word (one that masks every exception: the host
//! FPU then computes with the guest's precision and rounding), TOP and the tags. The
//! first inline
//! instruction checks that the stack is still so ([`Op::X87Guard`]); the lowering
//! then knows TOP and the tags at every instruction after it, so ST(i) is a fixed
//! physical register and an instruction that would find its register empty (or full,
//! for a push) is left to the interpreter, which gives the masked response. Anything
//! else the interpreter runs may change the stack or the control word: the rest of the
//! block's x87 instructions then run there too, or, after one that keeps both, are
//! guarded again.
//!
//! FIP, FDP and FOP are not updated here (AMD's CPUs save them only while an
//! exception is pending, so software cannot count on them).

use iced_x86::{Instruction, MemorySize, Mnemonic, OpKind, Register};

use super::flags::Rec;
use super::{Flow, Lower};
use crate::flags::{CcKind, CcOp, Width};
use crate::interp::x87::{arith_form, Arith};
use crate::ir::{Bin, FOp, Op, X87Fmt, X87Un, X87_TMP};
#[cfg(doc)]
use crate::translate::BlockMode;

/// Whether x87 code may run inline under control word `fcw`: it masks every
/// exception (an unmasked one needs the interpreter's response).
pub fn inline_under(fcw: u16) -> bool {
    fcw & 0x3f == 0x3f
}

/// What the lowering knows of the x87 stack at the current instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stack {
    pub fcw: u16,
    pub top: u8,
    pub ftw: u8,
    /// A guard has checked `top` and `ftw` (and the control word) since the block's
    /// start or the last interpreted instruction.
    pub guarded: bool,
}

impl Stack {
    pub fn new(fcw: u16, top: u8, ftw: u8) -> Self {
        Stack { fcw, top, ftw, guarded: false }
    }

    /// The physical register of ST(i).
    fn phys(&self, i: u8) -> u8 {
        (self.top + i) & 7
    }

    fn valid(&self, i: u8) -> bool {
        self.ftw & (1 << self.phys(i)) != 0
    }

    /// TOP moves down; the new ST(0) holds a value.
    fn push(&mut self) {
        self.top = (self.top + 7) & 7;
        self.ftw |= 1 << self.top;
    }

    /// ST(0) is emptied; TOP moves up.
    fn pop(&mut self) {
        self.ftw &= !(1 << self.top);
        self.top = (self.top + 1) & 7;
    }
}

/// Whether the instruction is one this family takes (the others run in the
/// interpreter).
pub fn is_x87(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Fld | Fst
            | Fstp
            | Fild
            | Fist
            | Fistp
            | Fisttp
            | Fldz
            | Fld1
            | Fxch
            | Fchs
            | Fabs
            | Fsqrt
            | Fadd
            | Faddp
            | Fiadd
            | Fsub
            | Fsubp
            | Fisub
            | Fsubr
            | Fsubrp
            | Fisubr
            | Fmul
            | Fmulp
            | Fimul
            | Fdiv
            | Fdivp
            | Fidiv
            | Fdivr
            | Fdivrp
            | Fidivr
            | Fcomi
            | Fcomip
            | Fucomi
            | Fucomip
    )
}

/// After the interpreter ran `ins`: the x87 stack as it most likely left it, for the
/// lowering to go on behind a new guard (which catches a wrong guess, e.g. after a
/// stack fault); None when it may have changed the control word or reloaded the stack.
pub fn after_interp(ins: &Instruction, s: Stack) -> Option<Stack> {
    use Mnemonic::*;
    let m = ins.mnemonic();
    let mmx = (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Register && ins.op_register(i).is_mm());
    if mmx || matches!(m, Fxrstor | Fxrstor64 | Xrstor | Xrstor64 | Xrstors | Xrstors64) {
        return None;
    }
    let pops: i8 =
        if !crate::interp::x87::handles(ins) {
            0
        } else {
            match m {
                Fnstsw | Fstsw | Fnstcw | Fstcw | Wait | Fnop | Fnclex | Fclex | Fxsave | Fxsave64 | Frndint
                | Fscale | Fprem | Fprem1 | Fsin | Fcos | Fxam | Ftst | Fcom | Fucom | Ficom | Fcmovb | Fcmove
                | Fcmovbe | Fcmovu | Fcmovnb | Fcmovne | Fcmovnbe | Fcmovnu | Fst | Fist | Fxch | Fchs | Fabs
                | Fsqrt | Fadd | Fsub | Fsubr | Fmul | Fdiv | Fdivr | Fiadd | Fisub | Fisubr | Fimul | Fidiv
                | Fidivr | Fcomi | Fucomi => 0,
                Fstp | Fistp | Fisttp | Fbstp | Fcomp | Fucomp | Ficomp | Fcomip | Fucomip | Faddp | Fsubp | Fsubrp
                | Fmulp | Fdivp | Fdivrp | Fpatan | Fyl2x | Fyl2xp1 => 1,
                Fcompp | Fucompp => 2,
                Fld | Fild | Fbld | Fldz | Fld1 | Fldpi | Fldl2e | Fldl2t | Fldlg2 | Fldln2 | Fptan | Fsincos
                | Fxtract => -1,
                _ => return None,
            }
        };
    let mut s = Stack { guarded: false, ..s };
    match pops {
        -1 => s.push(),
        n => (0..n).for_each(|_| s.pop()),
    }
    Some(s)
}

pub fn lower(l: &mut Lower) -> Flow {
    match l.x87 {
        Some(s) if inline(l, &s) => {
            emit(l, s);
            Flow::Continue
        }
        _ => l.interp(),
    }
}

/// Whether the current instruction is a form this family takes whose registers are
/// as it needs them: those it reads hold values, the one it pushes onto is empty.
fn inline(l: &Lower, s: &Stack) -> bool {
    use Mnemonic::*;
    let ins = l.ins;
    let m = ins.mnemonic();
    let reg = |i: u32| if ins.op_kind(i) == OpKind::Register { sti(ins.op_register(i)) } else { None };
    let valid = |i: Option<u8>| i.is_some_and(|i| s.valid(i));
    match mem_format(l) {
        Some(f) => {
            let ok = match m {
                Fld | Fild => f != MemFmt::Bad,
                // FSTP m80 is two stores, which one instruction may not have inline (a
                // store onto code replays the rest of its instruction): interpreted.
                Fst | Fstp | Fist | Fistp | Fisttp => matches!(f, MemFmt::Conv(_)),
                // Arithmetic: m32fp, m64fp, m16int, m32int.
                _ => matches!(f, MemFmt::Conv(X87Fmt::F32 | X87Fmt::F64 | X87Fmt::I16 | X87Fmt::I32)),
            };
            ok && if matches!(m, Fld | Fild) { !s.valid(7) } else { s.valid(0) }
        }
        None => match m {
            Fldz | Fld1 => !s.valid(7),
            Fld => !s.valid(7) && valid(reg(0)),
            Fst | Fstp => s.valid(0) && reg(0).is_some(),
            Fchs | Fabs | Fsqrt => s.valid(0),
            Fxch | Fcomi | Fcomip | Fucomi | Fucomip | Fadd | Faddp | Fsub | Fsubp | Fsubr | Fsubrp | Fmul | Fmulp
            | Fdiv | Fdivp | Fdivr | Fdivrp => ins.op_count() == 2 && valid(reg(0)) && valid(reg(1)),
            _ => false,
        },
    }
}

/// The index of ST(i) register `r`.
fn sti(r: Register) -> Option<u8> {
    (Register::ST0..=Register::ST7).contains(&r).then(|| (r as u32 - Register::ST0 as u32) as u8)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemFmt {
    /// Converted by the host FPU.
    Conv(X87Fmt),
    /// m80, moved as it is.
    Raw,
    /// One this family does not take (BCD, environments).
    Bad,
}

/// The format of the current instruction's memory operand, if it has one.
fn mem_format(l: &Lower) -> Option<MemFmt> {
    (0..l.ins.op_count()).any(|i| l.ins.op_kind(i) == OpKind::Memory).then(|| match l.ins.memory_size() {
        MemorySize::Float32 => MemFmt::Conv(X87Fmt::F32),
        MemorySize::Float64 => MemFmt::Conv(X87Fmt::F64),
        MemorySize::Int16 => MemFmt::Conv(X87Fmt::I16),
        MemorySize::Int32 => MemFmt::Conv(X87Fmt::I32),
        MemorySize::Int64 => MemFmt::Conv(X87Fmt::I64),
        MemorySize::Float80 => MemFmt::Raw,
        _ => MemFmt::Bad,
    })
}

fn emit(l: &mut Lower, mut s: Stack) {
    use Mnemonic::*;
    let ins = l.ins;
    let m = ins.mnemonic();
    if !s.guarded {
        l.exit(Op::X87Guard { fcw: s.fcw, top: s.top, ftw: s.ftw, rip: l.ip });
        s.guarded = true;
    }
    let mem = mem_format(l);
    let st0 = s.phys(0);
    // C1: set by the host operation, or cleared here.
    let mut clear_c1 = true;
    let mut pops = 0;
    match m {
        Fld | Fild | Fldz | Fld1 => {
            let d = s.phys(7);
            match mem {
                _ if matches!(m, Fldz | Fld1) => {
                    let v = l.b.konst(if m == Fld1 { 1f64.to_bits() } else { 0 });
                    l.b.push(Op::X87In { f: X87Fmt::F64, r: d, s: v });
                }
                None => {
                    let a = s.phys(sti(ins.op0_register()).unwrap());
                    l.b.push(Op::X87Un { op: X87Un::Mov, r: d, a });
                }
                Some(MemFmt::Raw) => {
                    let addr = l.ea();
                    let lo = l.load(8, addr);
                    let aw: Width = if l.mode.long { 8 } else { 4 };
                    let a8 = l.b.bin_k(Bin::Add, aw, addr, 8);
                    let hi = l.load(2, a8);
                    l.b.push(Op::X87SetRaw { r: d, lo, hi });
                }
                Some(MemFmt::Conv(f)) => {
                    let addr = l.ea();
                    let v = l.load(f.bytes(), addr);
                    l.b.push(Op::X87In { f, r: d, s: v });
                }
                Some(MemFmt::Bad) => unreachable!("checked by `inline`"),
            }
            s.push();
        }
        Fst | Fstp | Fist | Fistp | Fisttp => {
            pops = u8::from(matches!(m, Fstp | Fistp | Fisttp));
            match mem {
                None => {
                    let d = s.phys(sti(ins.op0_register()).unwrap());
                    if d != st0 {
                        l.b.push(Op::X87Un { op: X87Un::Mov, r: d, a: st0 });
                        s.ftw |= 1 << d;
                    }
                }
                Some(MemFmt::Conv(f)) => {
                    let addr = l.ea();
                    let v = l.b.x87_out(f, m == Fisttp, st0);
                    l.store(f.bytes(), addr, v);
                    clear_c1 = false;
                }
                Some(MemFmt::Raw | MemFmt::Bad) => unreachable!("checked by `inline`"),
            }
        }
        Fxch => {
            let a = s.phys(sti(ins.op0_register()).unwrap());
            let b = s.phys(sti(ins.op1_register()).unwrap());
            l.b.push(Op::X87Un { op: X87Un::Mov, r: X87_TMP, a });
            l.b.push(Op::X87Un { op: X87Un::Mov, r: a, a: b });
            l.b.push(Op::X87Un { op: X87Un::Mov, r: b, a: X87_TMP });
        }
        Fchs | Fabs => l.b.push(Op::X87Un { op: if m == Fchs { X87Un::Chs } else { X87Un::Abs }, r: st0, a: st0 }),
        Fsqrt => {
            l.b.push(Op::X87Un { op: X87Un::Sqrt, r: st0, a: st0 });
            clear_c1 = false;
        }
        Fcomi | Fcomip | Fucomi | Fucomip => {
            let a = s.phys(sti(ins.op0_register()).unwrap());
            let b = s.phys(sti(ins.op1_register()).unwrap());
            let f = l.b.x87_cmp(a, b, matches!(m, Fcomi | Fcomip));
            let zero = l.b.konst(0);
            l.flags.set(Rec { op: CcOp::new(CcKind::Flags, 8), dst: zero, src: f, src2: zero, a: None });
            pops = u8::from(matches!(m, Fcomip | Fucomip));
            clear_c1 = false;
        }
        _ => {
            // FADD..FDIVR: `dst = dst op src`, or `src op dst` for the R forms.
            let (op, rev, pop) = arith_form(m).expect("`is_x87` takes no other");
            let op = match op {
                Arith::Add => FOp::Add,
                Arith::Sub => FOp::Sub,
                Arith::Mul => FOp::Mul,
                Arith::Div => FOp::Div,
            };
            match mem {
                Some(MemFmt::Conv(f)) => {
                    let addr = l.ea();
                    let v = l.load(f.bytes(), addr);
                    l.b.push(Op::X87BinMem { op, rev, f, r: st0, a: st0, s: v });
                }
                _ => {
                    let d = s.phys(sti(ins.op0_register()).unwrap());
                    let src = s.phys(sti(ins.op1_register()).unwrap());
                    let (a, b) = if rev { (src, d) } else { (d, src) };
                    l.b.push(Op::X87Bin { op, r: d, a, b });
                }
            }
            pops = u8::from(pop);
            clear_c1 = false;
        }
    }
    let before = l.x87.map(|o| (o.top, o.ftw));
    (0..pops).for_each(|_| s.pop());
    if before != Some((s.top, s.ftw)) || clear_c1 {
        l.b.push(Op::X87Stack { top: s.top, ftw: s.ftw, clear_c1 });
    }
    l.x87 = Some(s);
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;
    use iced_x86::{Decoder, DecoderOptions};

    use crate::interp::testutil::asm;
    use crate::ir::{Block, Op};
    use crate::translate::BlockMode;

    fn lowered(x87: Option<(u8, u8)>, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Block {
        let mode = BlockMode {
            bits: 64,
            stack_width: 8,
            flat: true,
            long: true,
            single: false,
            sse: true,
            mx_masked: true,
            mmu_idx: 0,
            cpl: 0,
            x87: x87.map(|(top, ftw)| super::Stack::new(0x37f, top, ftw)),
            atomic: false,
        };
        let code = asm(64, f);
        let insns: Vec<_> = Decoder::with_ip(64, &code, 0x1000, DecoderOptions::NONE).into_iter().collect();
        crate::lower::lower_block(&insns, mode).0
    }

    fn count(b: &Block, f: impl Fn(&Op) -> bool) -> usize {
        b.ops.iter().filter(|o| f(o)).count()
    }

    #[test]
    fn compiled_x87_code_is_inline_behind_one_guard() {
        let b = lowered(Some((0, 0)), |a| {
            a.fld(qword_ptr(rdi))?;
            a.fld(dword_ptr(rdi + 8))?;
            a.fmul_2(st0, st1)?;
            a.fadd(qword_ptr(rdi + 16))?;
            a.fxch(st0, st1)?;
            a.fucomip(st0, st1)?;
            a.fchs()?;
            a.fistp(dword_ptr(rdi + 24))?;
            a.ret()
        });
        assert_eq!(count(&b, |o| matches!(o, Op::Interp { .. })), 0, "{b}");
        assert_eq!(count(&b, |o| matches!(o, Op::X87Guard { top: 0, ftw: 0, .. })), 1, "{b}");
        // Two pushes from an empty stack: R7 then R6; FMUL ST(0), ST(1) is R6 * R7.
        assert!(b.ops.iter().any(|o| matches!(o, Op::X87Bin { r: 6, a: 6, b: 7, .. })), "{b}");
        // Both popped again at the end.
        assert!(
            matches!(
                b.ops.iter().rev().find(|o| matches!(o, Op::X87Stack { .. })),
                Some(Op::X87Stack { top: 0, ftw: 0, .. })
            ),
            "{b}"
        );
    }

    #[test]
    fn what_the_stack_forbids_runs_in_the_interpreter() {
        // Under a control word that unmasks an exception, all of it.
        let b = lowered(None, |a| a.fld1());
        assert_eq!(count(&b, |o| matches!(o, Op::X87Guard { .. })), 0, "{b}");
        assert_eq!(count(&b, |o| matches!(o, Op::Interp { .. })), 1, "{b}");
        // A read of an empty ST(1) (the masked underflow response) and a push onto a
        // full register.
        let b = lowered(Some((0, 0x01)), |a| {
            a.fadd_2(st0, st1)?;
            a.fld1()
        });
        assert_eq!(count(&b, |o| matches!(o, Op::Interp { .. })), 1, "{b}");
        assert_eq!(count(&b, |o| matches!(o, Op::X87Guard { .. })), 1, "{b}");
        let b = lowered(Some((0, 0xff)), |a| a.fldz());
        assert_eq!(count(&b, |o| matches!(o, Op::Interp { .. })), 1, "{b}");
        // After FLDCW the control word is unknown: the rest is interpreted; after a
        // pop the interpreter did, the lowering goes on behind a new guard.
        let b = lowered(Some((0, 0)), |a| {
            a.fldcw(word_ptr(rdi))?;
            a.fld1()
        });
        assert_eq!(count(&b, |o| matches!(o, Op::Interp { .. })), 2, "{b}");
        let b = lowered(Some((7, 0x80)), |a| {
            a.fstp(tword_ptr(rdi))?;
            a.fld1()
        });
        assert_eq!(count(&b, |o| matches!(o, Op::X87Guard { top: 0, ftw: 0, .. })), 1, "{b}");
    }
}
