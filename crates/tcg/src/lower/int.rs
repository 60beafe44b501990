//! Integer instructions: moves, exchanges, ALU operations, two-operand multiplies,
//! shifts and rotates, sign extensions of the accumulator and the flag instructions.

use iced_x86::{Mnemonic, OpKind};
use quern_core::regs::flags::{AF, CF, DF, PF, SF, ZF};

use super::flags::Rec;
use super::{Flow, Lower};
use crate::flags::{mask, CcKind, CcOp, Width};
use crate::ir::{Bin, Cond, Global, Op, Test, Un, Val};
use crate::translate::gpr;

const RAX: usize = 0;
const RDX: usize = 2;

pub fn lower(l: &mut Lower) -> Flow {
    use Mnemonic::*;
    let ins = l.ins;
    match ins.mnemonic() {
        Nop => {}
        Mov => {
            let v = l.read(1);
            l.write(0, v, None);
        }
        Movzx | Movsx | Movsxd => {
            let from = l.width(1);
            let v = l.read(1);
            let op = if ins.mnemonic() == Movzx { Un::Zext } else { Un::Sext };
            let v = l.b.un(op, from, v);
            l.write(0, v, None);
        }
        Lea => {
            let v = l.effective_address();
            l.write(0, v, None);
        }
        Xchg if ins.op0_kind() == OpKind::Register && ins.op1_kind() == OpKind::Register => {
            let a = l.read(0);
            let b = l.read(1);
            l.write(0, b, None);
            l.write(1, a, None);
        }
        Xchg => {
            // One load and one store of the memory side, then the register.
            let (m, r) = if ins.op0_kind() == OpKind::Memory { (0, 1) } else { (1, 0) };
            let w = l.width(m);
            let addr = l.ea();
            let old = l.load(w, addr);
            let v = l.read(r);
            l.store(w, addr, v);
            l.set_reg(ins.op_register(r), old);
        }
        Xadd => {
            let w = l.width(0);
            let addr = mem_addr(l, 0);
            let dst = read_at(l, 0, addr);
            let src = l.read(1);
            let sum = l.b.bin(Bin::Add, w, dst, src);
            // TEMP = SRC + DEST; SRC = DEST; DEST = TEMP (memory first).
            if addr.is_some() {
                l.write(0, sum, addr);
                l.write(1, dst, None);
            } else {
                l.write(1, dst, None);
                l.write(0, sum, None);
            }
            let zero = l.b.konst(0);
            l.flags.set(Rec { op: CcOp::new(CcKind::Add, w), dst: sum, src, src2: zero, a: Some(dst) });
        }
        Cmpxchg => cmpxchg(l),
        Cbw | Cwde | Cdqe => {
            let w: Width = match ins.mnemonic() {
                Cbw => 2,
                Cwde => 4,
                _ => 8,
            };
            let a = l.b.get(Global::Gpr(RAX as u8));
            let v = l.b.un(Un::Sext, w / 2, a);
            l.set_gpr(RAX, w, false, v);
        }
        Cwd | Cdq | Cqo => {
            let w: Width = match ins.mnemonic() {
                Cwd => 2,
                Cdq => 4,
                _ => 8,
            };
            let a = l.b.get(Global::Gpr(RAX as u8));
            let v = l.b.bin_k(Bin::Sar, w, a, 8 * w as u64 - 1);
            l.set_gpr(RDX, w, false, v);
        }
        Clc | Stc => {
            let cf = l.b.konst(u64::from(ins.mnemonic() == Stc));
            l.flags.set_cf(cf);
        }
        Cmc => {
            let c = l.flags.carry(&mut l.b);
            let cf = l.b.bin_k(Bin::Xor, 8, c, 1);
            l.flags.set_cf(cf);
        }
        Cld | Std => {
            let e = l.b.get(Global::Eflags);
            let e = if ins.mnemonic() == Std { l.b.bin_k(Bin::Or, 8, e, DF) } else { l.b.bin_k(Bin::And, 8, e, !DF) };
            l.b.set(Global::Eflags, e);
        }
        Lahf => {
            let f = l.flags.all(&mut l.b);
            let f = l.b.bin_k(Bin::And, 8, f, CF | PF | AF | ZF | SF);
            let ah = l.b.bin_k(Bin::Or, 8, f, 2);
            l.set_gpr(RAX, 1, true, ah);
        }
        Sahf => {
            // SF, ZF, AF, PF, CF from AH; OF stays.
            let of = l.flags.overflow(&mut l.b);
            let a = l.b.get(Global::Gpr(RAX as u8));
            let ah = l.b.bin_k(Bin::Shr, 8, a, 8);
            let f = l.b.bin_k(Bin::And, 8, ah, CF | PF | AF | ZF | SF);
            let o = l.b.bin_k(Bin::Shl, 8, of, 11);
            let src = l.b.bin(Bin::Or, 8, f, o);
            let zero = l.b.konst(0);
            l.flags.set(Rec { op: CcOp::new(CcKind::Flags, 8), dst: zero, src, src2: zero, a: None });
        }
        Bswap if l.width(0) >= 4 => {
            let w = l.width(0);
            let v = l.read(0);
            let v = l.b.un(Un::Bswap, w, v);
            l.write(0, v, None);
        }
        Bswap => return l.interp(),
        Not => {
            let w = l.width(0);
            let addr = mem_addr(l, 0);
            let v = read_at(l, 0, addr);
            let r = l.b.un(Un::Not, w, v);
            l.write(0, r, addr);
        }
        Neg => {
            let w = l.width(0);
            let addr = mem_addr(l, 0);
            let v = read_at(l, 0, addr);
            let r = l.b.un(Un::Neg, w, v);
            l.write(0, r, addr);
            let zero = l.b.konst(0);
            l.flags.set(Rec { op: CcOp::new(CcKind::Neg, w), dst: r, src: v, src2: zero, a: None });
        }
        Inc | Dec => {
            let w = l.width(0);
            // INC/DEC keep CF: the record carries the old one (dropped if unread).
            let cf = l.flags.carry(&mut l.b);
            let addr = mem_addr(l, 0);
            let v = read_at(l, 0, addr);
            let op = if ins.mnemonic() == Inc { Bin::Add } else { Bin::Sub };
            let r = l.b.bin_k(op, w, v, 1);
            l.write(0, r, addr);
            let kind = if ins.mnemonic() == Inc { CcKind::Inc } else { CcKind::Dec };
            let zero = l.b.konst(0);
            l.flags.set(Rec { op: CcOp::new(kind, w), dst: r, src: zero, src2: cf, a: None });
        }
        Imul if ins.op_count() >= 2 => {
            let w = l.width(0);
            let (a, b) = if ins.op_count() == 3 {
                let a = l.read(1);
                (a, l.b.konst(ins.immediate(2) & mask(w)))
            } else {
                let b = l.read(1);
                (l.read(0), b)
            };
            let r = l.b.bin(Bin::Mul, w, a, b);
            let ovf = l.b.mul_overflow(w, a, b);
            l.write(0, r, None);
            let zero = l.b.konst(0);
            l.flags.set(Rec { op: CcOp::new(CcKind::Mul, w), dst: r, src: ovf, src2: zero, a: None });
        }
        Add | Or | Adc | Sbb | And | Sub | Xor | Cmp | Test => alu(l),
        Shl | Sal | Shr | Sar => return shift(l),
        Shld | Shrd => return double_shift(l),
        Rol | Ror => return rotate(l),
        _ => return l.interp(),
    }
    Flow::Continue
}

/// The address of operand `i` if it is in memory (computed once for read and write).
pub(super) fn mem_addr(l: &mut Lower, i: u32) -> Option<Val> {
    (l.ins.op_kind(i) == OpKind::Memory).then(|| l.ea())
}

pub(super) fn read_at(l: &mut Lower, i: u32, addr: Option<Val>) -> Val {
    match addr {
        Some(a) => {
            let w = l.width(i);
            l.load(w, a)
        }
        None => l.read(i),
    }
}

/// ADD, OR, ADC, SBB, AND, SUB, XOR, CMP, TEST.
fn alu(l: &mut Lower) {
    use Mnemonic::*;
    let m = l.ins.mnemonic();
    let w = l.width(0);
    let (op, kind, writes) = match m {
        Add => (Bin::Add, CcKind::Add, true),
        Or => (Bin::Or, CcKind::Logic, true),
        Adc => (Bin::Add, CcKind::Adc, true),
        Sbb => (Bin::Sub, CcKind::Sbb, true),
        And => (Bin::And, CcKind::Logic, true),
        Sub => (Bin::Sub, CcKind::Sub, true),
        Xor => (Bin::Xor, CcKind::Logic, true),
        Cmp => (Bin::Sub, CcKind::Sub, false),
        _ => (Bin::And, CcKind::Logic, false),
    };
    let same_reg = l.ins.op0_kind() == OpKind::Register
        && l.ins.op1_kind() == OpKind::Register
        && l.ins.op0_register() == l.ins.op1_register();
    let zero = l.b.konst(0);
    if same_reg && matches!(m, Xor | Sub) {
        // The zeroing idiom: no operand is read.
        let z = l.b.konst(0);
        l.write(0, z, None);
        l.flags.set(Rec { op: CcOp::new(kind, w), dst: z, src: z, src2: zero, a: Some(z) });
        return;
    }
    let carry = matches!(kind, CcKind::Adc | CcKind::Sbb).then(|| l.flags.carry(&mut l.b));
    let addr = mem_addr(l, 0);
    let a = read_at(l, 0, addr);
    let b = l.read(1);
    let mut r = l.b.bin(op, w, a, b);
    if let Some(c) = carry {
        r = l.b.bin(op, w, r, c);
    }
    if writes {
        l.write(0, r, addr);
    }
    let keep_a = matches!(kind, CcKind::Add | CcKind::Sub | CcKind::Adc | CcKind::Sbb);
    l.flags.set(Rec { op: CcOp::new(kind, w), dst: r, src: b, src2: carry.unwrap_or(zero), a: keep_a.then_some(a) });
}

/// CMPXCHG: the accumulator compared with the destination; equal: destination =
/// source, else accumulator = destination. A memory destination is written either
/// way (one load, one store); a register one only when equal, the accumulator only
/// when not (neither is zero-extended otherwise).
fn cmpxchg(l: &mut Lower) {
    let ins = l.ins;
    let w = l.width(0);
    let addr = mem_addr(l, 0);
    let old = read_at(l, 0, addr);
    let src = l.read(1);
    let acc = l.b.get(Global::Gpr(RAX as u8));
    let eq = Test { c: Cond::Eq, w, a: acc, b: old };
    match addr {
        Some(a) => {
            let v = l.b.select(eq, src, old);
            l.store(w, a, v);
        }
        None => {
            let (n, hi) = gpr(ins.op0_register());
            let cur = l.b.get(Global::Gpr(n as u8));
            let new = l.merge_gpr(n, w, hi, src);
            let v = l.b.select(eq, new, cur);
            l.b.set(Global::Gpr(n as u8), v);
        }
    }
    let cur = l.b.get(Global::Gpr(RAX as u8));
    let new = l.merge_gpr(RAX, w, false, old);
    let v = l.b.select(eq, cur, new);
    l.b.set(Global::Gpr(RAX as u8), v);
    let diff = l.b.bin(Bin::Sub, w, acc, old);
    let zero = l.b.konst(0);
    l.flags.set(Rec { op: CcOp::new(CcKind::Sub, w), dst: diff, src: old, src2: zero, a: Some(acc) });
}

/// The masked count of a shift or rotate: a constant, or CL.
enum Count {
    Imm(u64),
    Cl(Val),
}

fn count(l: &mut Lower) -> Count {
    count_at(l, 1)
}

/// The count in operand `i`.
fn count_at(l: &mut Lower, i: u32) -> Count {
    let m: u64 = if l.width(0) == 8 { 0x3f } else { 0x1f };
    match l.ins.op_kind(i) {
        OpKind::Register => {
            let c = l.reg(iced_x86::Register::CL);
            Count::Cl(l.b.bin_k(Bin::And, 8, c, m))
        }
        _ => Count::Imm(l.ins.immediate(i) & m),
    }
}

/// A zero count changes nothing (but a 32-bit register is still zero-extended): with
/// a constant count the instruction is that no-op; with CL the block leaves to the
/// next instruction when CL is 0, so what follows may assume a nonzero count.
fn zero_count(l: &mut Lower, c: &Count) -> bool {
    let reg32 = l.width(0) == 4 && l.ins.op0_kind() == OpKind::Register;
    match *c {
        Count::Imm(0) => {
            if reg32 {
                let v = l.read(0);
                l.write(0, v, None);
            }
            true
        }
        Count::Imm(_) => false,
        Count::Cl(n) => {
            if reg32 {
                let v = l.read(0);
                l.write(0, v, None);
            }
            let zero = l.b.konst(0);
            let next = l.next;
            l.exit(Op::ExitIf { t: Test { c: Cond::Eq, w: 1, a: n, b: zero }, rip: next });
            false
        }
    }
}

/// A shift's or rotate's count (and, when it is a constant, its value), destination
/// address (memory) and operand; None when the count is a constant 0 (the instruction
/// then did all it does).
fn shift_operands(l: &mut Lower) -> Option<(Val, Option<u64>, Option<Val>, Val)> {
    let c = count(l);
    if zero_count(l, &c) {
        return None;
    }
    let (n, k) = match c {
        Count::Imm(k) => (l.b.konst(k), Some(k)),
        Count::Cl(v) => (v, None),
    };
    let addr = mem_addr(l, 0);
    let a = read_at(l, 0, addr);
    Some((n, k, addr, a))
}

/// SHL/SAL, SHR, SAR.
fn shift(l: &mut Lower) -> Flow {
    let w = l.width(0);
    let Some((n, k, addr, a)) = shift_operands(l) else { return Flow::Continue };
    let (op, kind) = match l.ins.mnemonic() {
        Mnemonic::Shl | Mnemonic::Sal => (Bin::Shl, CcKind::Shl),
        Mnemonic::Shr => (Bin::Shr, CcKind::Shr),
        _ => (Bin::Sar, CcKind::Sar),
    };
    let r = l.b.bin(op, w, a, n);
    let bits = 8 * u64::from(w);
    let zero = l.b.konst(0);
    let src2 = if kind == CcKind::Shr { a } else { zero };
    // A constant count within the width: the operand is the record's `src`, CF the bit
    // that went out last (nothing computed unless a flag is read).
    if let Some(k) = k {
        if (1..=bits).contains(&k) {
            let pos = if op == Bin::Shl { bits - k } else { k - 1 };
            l.write(0, r, addr);
            l.flags.set(Rec { op: CcOp::new(kind, w).with_cf_pos(pos as u32), dst: r, src: a, src2, a: None });
            return Flow::Continue;
        }
    }
    // Otherwise CF is computed: shift by count-1 in 64 bits, and the bit that goes
    // next is bit 0 of the record's `src` (every reader takes bit 0 alone).
    let n1 = l.b.bin_k(Bin::Sub, 8, n, 1);
    let cf = match op {
        Bin::Shl => {
            let za = l.b.un(Un::Zext, w, a);
            let t = l.b.bin(Bin::Shl, 8, za, n1);
            l.b.bin_k(Bin::Shr, 8, t, 8 * w as u64 - 1)
        }
        Bin::Shr => {
            let za = l.b.un(Un::Zext, w, a);
            l.b.bin(Bin::Shr, 8, za, n1)
        }
        _ => {
            let sa = l.b.un(Un::Sext, w, a);
            l.b.bin(Bin::Sar, 8, sa, n1)
        }
    };
    l.write(0, r, addr);
    l.flags.set(Rec { op: CcOp::new(kind, w), dst: r, src: cf, src2, a: None });
    Flow::Continue
}

/// ROL, ROR: only CF and OF change.
fn rotate(l: &mut Lower) -> Flow {
    let w = l.width(0);
    let Some((n, _, addr, a)) = shift_operands(l) else { return Flow::Continue };
    let rol = l.ins.mnemonic() == Mnemonic::Rol;
    let r = l.b.bin(if rol { Bin::Rol } else { Bin::Ror }, w, a, n);
    let bits = 8 * w as u64;
    let msb = {
        let t = l.b.bin_k(Bin::Shr, 8, r, bits - 1);
        l.b.bin_k(Bin::And, 8, t, 1)
    };
    let (cf, of) = if rol {
        let cf = l.b.bin_k(Bin::And, 8, r, 1);
        let of = l.b.bin(Bin::Xor, 8, msb, cf);
        (cf, of)
    } else {
        let t = l.b.bin_k(Bin::Shr, 8, r, bits - 2);
        let next = l.b.bin_k(Bin::And, 8, t, 1);
        let of = l.b.bin(Bin::Xor, 8, msb, next);
        (msb, of)
    };
    l.write(0, r, addr);
    l.flags.set_cf_of(cf, of);
    Flow::Continue
}

/// SHLD, SHRD: the destination shifted, the bits coming in from the source. Flags as
/// for SHL (SHLD) and SHR (SHRD), OF from the sign change (defined for a count of 1).
fn double_shift(l: &mut Lower) -> Flow {
    let w = l.width(0);
    let bits = 8 * w as u64;
    let c = count_at(l, 2);
    if zero_count(l, &c) {
        return Flow::Continue;
    }
    let n = match c {
        Count::Imm(k) => l.b.konst(k),
        Count::Cl(v) => v,
    };
    let addr = mem_addr(l, 0);
    let a = read_at(l, 0, addr);
    let s = l.read(1);
    let za = l.b.un(Un::Zext, w, a);
    let kbits = l.b.konst(bits);
    let rest = l.b.bin(Bin::Sub, 8, kbits, n);
    let left = l.ins.mnemonic() == Mnemonic::Shld;
    let (r, cf) = if left {
        let hi = l.b.bin(Bin::Shl, w, a, n);
        let zs = l.b.un(Un::Zext, w, s);
        let lo = l.b.bin(Bin::Shr, w, zs, rest);
        let r = l.b.bin(Bin::Or, w, hi, lo);
        let t = l.b.bin(Bin::Shr, 8, za, rest);
        (r, l.b.bin_k(Bin::And, 8, t, 1))
    } else {
        let lo = l.b.bin(Bin::Shr, w, za, n);
        let hi = l.b.bin(Bin::Shl, w, s, rest);
        let r = l.b.bin(Bin::Or, w, hi, lo);
        let n1 = l.b.bin_k(Bin::Sub, 8, n, 1);
        let t = l.b.bin(Bin::Shr, 8, za, n1);
        (r, l.b.bin_k(Bin::And, 8, t, 1))
    };
    l.write(0, r, addr);
    if left {
        let zero = l.b.konst(0);
        l.flags.set(Rec { op: CcOp::new(CcKind::Shl, w), dst: r, src: cf, src2: zero, a: None });
    } else {
        // SHR's OF is the sign of its src2: here the sign change.
        let x = l.b.bin(Bin::Xor, 8, a, r);
        l.flags.set(Rec { op: CcOp::new(CcKind::Shr, w), dst: r, src: cf, src2: x, a: None });
    }
    Flow::Continue
}
