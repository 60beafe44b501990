//! Integer instructions: moves, ALU operations, multiplies, shifts and rotates.

use iced_x86::{Mnemonic, OpKind};

use super::flags::Rec;
use super::{Flow, Lower};
use crate::flags::{mask, CcKind, CcOp};
use crate::ir::{Bin, Cond, Op, Test, Un, Val};

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
        Xchg => {
            let a = l.read(0);
            let b = l.read(1);
            l.write(0, b, None);
            l.write(1, a, None);
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
        Imul => return l.interp(),
        Add | Or | Adc | Sbb | And | Sub | Xor | Cmp | Test => alu(l),
        Shl | Sal | Shr | Sar => return shift(l),
        Rol | Ror => return rotate(l),
        _ => return l.interp(),
    }
    Flow::Continue
}

/// The address of operand `i` if it is in memory (computed once for read and write).
fn mem_addr(l: &mut Lower, i: u32) -> Option<Val> {
    (l.ins.op_kind(i) == OpKind::Memory).then(|| l.ea())
}

fn read_at(l: &mut Lower, i: u32, addr: Option<Val>) -> Val {
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

/// The masked count of a shift or rotate: a constant, or CL.
enum Count {
    Imm(u64),
    Cl(Val),
}

fn count(l: &mut Lower) -> Count {
    let m: u64 = if l.width(0) == 8 { 0x3f } else { 0x1f };
    match l.ins.op1_kind() {
        OpKind::Register => {
            let c = l.reg(iced_x86::Register::CL);
            Count::Cl(l.b.bin_k(Bin::And, 8, c, m))
        }
        _ => Count::Imm(l.ins.immediate(1) & m),
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

/// SHL/SAL, SHR, SAR.
fn shift(l: &mut Lower) -> Flow {
    let w = l.width(0);
    let c = count(l);
    if zero_count(l, &c) {
        return Flow::Continue;
    }
    let n = match c {
        Count::Imm(k) => l.b.konst(k),
        Count::Cl(v) => v,
    };
    let addr = mem_addr(l, 0);
    let a = read_at(l, 0, addr);
    let (op, kind) = match l.ins.mnemonic() {
        Mnemonic::Shl | Mnemonic::Sal => (Bin::Shl, CcKind::Shl),
        Mnemonic::Shr => (Bin::Shr, CcKind::Shr),
        _ => (Bin::Sar, CcKind::Sar),
    };
    let r = l.b.bin(op, w, a, n);
    // CF is the last bit shifted out: shift by count-1 in 64 bits, then take the
    // bit that goes next.
    let n1 = l.b.bin_k(Bin::Sub, 8, n, 1);
    let cf = match op {
        Bin::Shl => {
            let za = l.b.un(Un::Zext, w, a);
            let t = l.b.bin(Bin::Shl, 8, za, n1);
            let t = l.b.bin_k(Bin::Shr, 8, t, 8 * w as u64 - 1);
            l.b.bin_k(Bin::And, 8, t, 1)
        }
        Bin::Shr => {
            let za = l.b.un(Un::Zext, w, a);
            let t = l.b.bin(Bin::Shr, 8, za, n1);
            l.b.bin_k(Bin::And, 8, t, 1)
        }
        _ => {
            let sa = l.b.un(Un::Sext, w, a);
            let t = l.b.bin(Bin::Sar, 8, sa, n1);
            l.b.bin_k(Bin::And, 8, t, 1)
        }
    };
    l.write(0, r, addr);
    let zero = l.b.konst(0);
    let src2 = if kind == CcKind::Shr { a } else { zero };
    l.flags.set(Rec { op: CcOp::new(kind, w), dst: r, src: cf, src2, a: None });
    Flow::Continue
}

/// ROL, ROR: only CF and OF change.
fn rotate(l: &mut Lower) -> Flow {
    let w = l.width(0);
    let c = count(l);
    if zero_count(l, &c) {
        return Flow::Continue;
    }
    let n = match c {
        Count::Imm(k) => l.b.konst(k),
        Count::Cl(v) => v,
    };
    let addr = mem_addr(l, 0);
    let a = read_at(l, 0, addr);
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
    l.flags.set_cf_of(&mut l.b, cf, of);
    Flow::Continue
}
