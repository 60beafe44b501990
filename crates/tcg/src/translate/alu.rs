//! ADD, OR, ADC, SBB, AND, SUB, XOR, CMP, TEST, INC, DEC, NEG, NOT: the host runs the
//! operation, and a lazy-flag record is stored for whoever reads the flags.

use iced_x86::{Mnemonic, OpKind};

use super::{Ctx, Flow};
use crate::flags::{CcKind, CcOp};
use crate::x64::{Alu, T};

pub fn translate(ctx: &mut Ctx) -> Flow {
    let m = ctx.ins.mnemonic();
    let w = ctx.width(0);
    match m {
        Mnemonic::Inc | Mnemonic::Dec => {
            // INC/DEC keep CF: record the old one for the flag computation.
            if ctx.carry_needed {
                carry_in(ctx, T::T2);
            }
            ctx.load_op(0, T::T0);
            ctx.em.inc_dec(T::T0, w, m == Mnemonic::Dec);
            let kind = if m == Mnemonic::Inc { CcKind::Inc } else { CcKind::Dec };
            set_cc(ctx, CcOp::new(kind, w), Some(T::T0), None, Some(T::T2));
            ctx.store_op(0, T::T0);
        }
        // The two- and three-operand IMUL: the host multiplies, its OF says whether the
        // product fit (the one-operand forms widen into RDX:RAX: interpreter).
        Mnemonic::Imul if ctx.ins.op_count() >= 2 && w >= 2 => {
            if ctx.ins.op_count() == 3 {
                ctx.load_op(1, T::T0);
                let imm = ctx.ins.immediate(2) & crate::flags::mask(w);
                ctx.em.load_imm(T::T1, imm);
            } else {
                ctx.load_op(1, T::T1);
                ctx.load_op(0, T::T0);
            }
            ctx.em.imul(w, T::T0, T::T1);
            if ctx.flags_needed {
                ctx.em.setcc_host(0x0, T::T1); // OF = CF: the product did not fit
            }
            set_cc(ctx, CcOp::new(CcKind::Mul, w), Some(T::T0), Some(T::T1), None);
            ctx.store_op(0, T::T0);
        }
        Mnemonic::Neg | Mnemonic::Not => {
            ctx.load_op(0, T::T0);
            if m == Mnemonic::Neg {
                ctx.em.mov(T::T1, T::T0);
                ctx.em.neg(T::T0, w, false);
                set_cc(ctx, CcOp::new(CcKind::Neg, w), Some(T::T0), Some(T::T1), None);
            } else {
                ctx.em.neg(T::T0, w, true);
            }
            ctx.store_op(0, T::T0);
        }
        _ => {
            let (op, kind, writes) = match m {
                Mnemonic::Add => (Alu::Add, CcKind::Add, true),
                Mnemonic::Or => (Alu::Or, CcKind::Logic, true),
                Mnemonic::Adc => (Alu::Adc, CcKind::Adc, true),
                Mnemonic::Sbb => (Alu::Sbb, CcKind::Sbb, true),
                Mnemonic::And => (Alu::And, CcKind::Logic, true),
                Mnemonic::Sub => (Alu::Sub, CcKind::Sub, true),
                Mnemonic::Xor => (Alu::Xor, CcKind::Logic, true),
                Mnemonic::Cmp => (Alu::Sub, CcKind::Sub, false),
                _ => (Alu::And, CcKind::Logic, false), // TEST
            };
            let with_carry = matches!(kind, CcKind::Adc | CcKind::Sbb);
            if with_carry {
                carry_in(ctx, T::T2);
            }
            // xor r, r (and sub r, r): the classic zeroing idiom needs no loads.
            let same_reg = ctx.ins.op0_kind() == OpKind::Register
                && ctx.ins.op1_kind() == OpKind::Register
                && ctx.ins.op0_register() == ctx.ins.op1_register();
            if same_reg && matches!(m, Mnemonic::Xor | Mnemonic::Sub) {
                ctx.em.load_imm(T::T0, 0);
                ctx.em.load_imm(T::T1, 0);
            } else {
                ctx.load_op(1, T::T1);
                ctx.load_op(0, T::T0);
                if with_carry {
                    ctx.em.carry_from(T::T2);
                }
                ctx.em.alu(op, w, T::T0, T::T1);
            }
            // Temporaries hold zero-extended values and narrow host operations leave the
            // upper bits alone, so T0 is already the zero-extended result.
            set_cc(ctx, CcOp::new(kind, w), Some(T::T0), Some(T::T1), with_carry.then_some(T::T2));
            if writes {
                ctx.store_op(0, T::T0);
            }
        }
    }
    Flow::Continue
}

/// t = CF as the guest sees it now (0 or 1): inline when the flag record is known at
/// translation time, else from the Rust flag computation.
fn carry_in(ctx: &mut Ctx, t: T) {
    match ctx.cc.map(|c| c.kind()) {
        Some(CcKind::Sub | CcKind::Add | CcKind::Logic) => {
            ctx.em.flags_to_host(ctx.cc, 0x2, ctx.h.flags);
            ctx.em.setcc_host(0x2, t);
        }
        Some(CcKind::Inc | CcKind::Dec) => ctx.em.load_cc_src2(t),
        _ => {
            ctx.em.call_helper(ctx.h.flags, &[], ctx.ip, false, false);
            ctx.em.and_imm(T::T0, 1);
            if t != T::T0 {
                ctx.em.mov(t, T::T0);
            }
        }
    }
}

/// Stores the lazy-flag record, unless nothing will read it.
pub(super) fn set_cc(ctx: &mut Ctx, op: CcOp, dst: Option<T>, src: Option<T>, src2: Option<T>) {
    if ctx.flags_needed {
        ctx.em.set_cc(op, dst, src, src2);
        ctx.cc = Some(op);
    } else {
        ctx.cc = None;
    }
}
