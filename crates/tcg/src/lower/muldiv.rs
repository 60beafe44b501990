//! One-operand MUL and IMUL (rDX:rAX = rAX * r/m, AX = AL * r/m8), DIV and IDIV
//! (rAX = rDX:rAX / r/m, rDX = the remainder; AL, AH from AX for bytes).
//!
//! MUL/IMUL record a [`CcKind::Mul`] result: CF = OF = "the product did not fit".
//! DIV/IDIV raise #DE on a zero divisor or a quotient that does not fit, before any
//! register changes, and leave the flags alone. IDIV divides the magnitudes and
//! applies the signs, so the IR needs only the unsigned division.

use iced_x86::Mnemonic;

use super::flags::Rec;
use super::{Flow, Lower};
use crate::cpu::vector;
use crate::flags::{CcKind, CcOp};
use crate::ir::{Bin, Cond, Global, Op, Test, Un, Val};

const RAX: usize = 0;
const RDX: usize = 2;

pub fn lower(l: &mut Lower) -> Flow {
    match l.ins.mnemonic() {
        Mnemonic::Mul | Mnemonic::Imul => multiply(l),
        _ => divide(l),
    }
    Flow::Continue
}

fn multiply(l: &mut Lower) {
    let w = l.width(0);
    let signed = l.ins.mnemonic() == Mnemonic::Imul;
    let src = l.read(0);
    let a = l.b.get(Global::Gpr(RAX as u8));
    let zero = l.b.konst(0);
    if w == 1 {
        let ext = if signed { Un::Sext } else { Un::Zext };
        let x = l.b.un(ext, 1, a);
        let y = l.b.un(ext, 1, src);
        let p = l.b.bin(Bin::Mul, 2, x, y);
        l.set_gpr(RAX, 2, false, p);
        let ovf = if signed {
            let s = l.b.un(Un::Sext, 1, p);
            l.b.setcond(Test { c: Cond::Ne, w: 2, a: p, b: s })
        } else {
            let hi = l.b.bin_k(Bin::Shr, 8, p, 8);
            l.b.setcond(Test { c: Cond::Ne, w: 1, a: hi, b: zero })
        };
        l.flags.set(Rec { op: CcOp::new(CcKind::Mul, 1), dst: p, src: ovf, src2: zero, a: None });
        return;
    }
    let lo = l.b.bin(Bin::Mul, w, a, src);
    let hi = l.b.bin(if signed { Bin::MulHs } else { Bin::MulHu }, w, a, src);
    l.set_gpr(RAX, w, false, lo);
    l.set_gpr(RDX, w, false, hi);
    let ovf = if signed {
        let s = l.b.bin_k(Bin::Sar, w, lo, 8 * w as u64 - 1);
        l.b.setcond(Test { c: Cond::Ne, w, a: hi, b: s })
    } else {
        l.b.setcond(Test { c: Cond::Ne, w, a: hi, b: zero })
    };
    l.flags.set(Rec { op: CcOp::new(CcKind::Mul, w), dst: lo, src: ovf, src2: zero, a: None });
}

/// Raises #DE when `t` holds.
fn fault_if(l: &mut Lower, t: Test) {
    l.exit(Op::TrapIf { t, vector: vector::DE });
}

fn divide(l: &mut Lower) {
    let w = l.width(0);
    let div = l.read(0);
    let (hi, lo) = if w == 1 {
        let ax = l.b.get(Global::Gpr(RAX as u8));
        (l.b.bin_k(Bin::Shr, 8, ax, 8), ax)
    } else {
        (l.b.get(Global::Gpr(RDX as u8)), l.b.get(Global::Gpr(RAX as u8)))
    };
    let (q, r) = if l.ins.mnemonic() == Mnemonic::Div {
        // The quotient fits iff hi < div (which also rules out div = 0).
        fault_if(l, Test { c: Cond::Geu, w, a: hi, b: div });
        (l.b.div(false, w, hi, lo, div), l.b.div(true, w, hi, lo, div))
    } else {
        signed_divide(l, hi, lo, div)
    };
    if w == 1 {
        let q = l.b.un(Un::Zext, 1, q);
        let r = l.b.un(Un::Zext, 1, r);
        let r = l.b.bin_k(Bin::Shl, 8, r, 8);
        let ax = l.b.bin(Bin::Or, 8, q, r);
        l.set_gpr(RAX, 2, false, ax);
    } else {
        l.set_gpr(RAX, w, false, q);
        l.set_gpr(RDX, w, false, r);
    }
}

/// IDIV through the magnitudes: |hi:lo| / |div| unsigned, then the signs (the
/// quotient's: the operands' differ; the remainder's: the dividend's).
fn signed_divide(l: &mut Lower, hi: Val, lo: Val, div: Val) -> (Val, Val) {
    let w = l.width(0);
    let bits = 8 * w as u64;
    let zero = l.b.konst(0);
    let n_neg = Test { c: Cond::Lt, w, a: hi, b: zero };
    let d_neg = Test { c: Cond::Lt, w, a: div, b: zero };
    // -(hi:lo) = (!hi + (lo == 0)) : -lo.
    let nlo = l.b.un(Un::Neg, w, lo);
    let lz = l.b.setcond(Test { c: Cond::Eq, w, a: lo, b: zero });
    let nhi = l.b.un(Un::Not, w, hi);
    let nhi = l.b.bin(Bin::Add, w, nhi, lz);
    let alo = l.b.select(n_neg, nlo, lo);
    let ahi = l.b.select(n_neg, nhi, hi);
    let ndiv = l.b.un(Un::Neg, w, div);
    let adiv = l.b.select(d_neg, ndiv, div);
    // The magnitude's quotient must fit in w bytes (also rules out div = 0)...
    fault_if(l, Test { c: Cond::Geu, w, a: ahi, b: adiv });
    let aq = l.b.div(false, w, ahi, alo, adiv);
    let ar = l.b.div(true, w, ahi, alo, adiv);
    // ... and in the signed range: up to 2^(bits-1) when negative, else one less.
    let sn = l.b.setcond(n_neg);
    let sd = l.b.setcond(d_neg);
    let differ = l.b.bin(Bin::Xor, 8, sn, sd);
    let lim = l.b.bin_k(Bin::Add, 8, differ, (1u64 << (bits - 1)) - 1);
    fault_if(l, Test { c: Cond::Gtu, w: 8, a: aq, b: lim });
    let nq = l.b.un(Un::Neg, w, aq);
    let q_neg = Test { c: Cond::Ne, w: 1, a: differ, b: zero };
    let q = l.b.select(q_neg, nq, aq);
    let nr = l.b.un(Un::Neg, w, ar);
    let r = l.b.select(n_neg, nr, ar);
    (q, r)
}
