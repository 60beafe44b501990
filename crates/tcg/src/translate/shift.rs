//! SHL/SAL, SHR, SAR by 1, an immediate or CL. The host shifts (its CF is the last
//! bit out, as the guest's); a zero count changes no flag and no operand, except that
//! a 32-bit register is still zero-extended.

use iced_x86::{Mnemonic, OpKind};

use super::alu::set_cc;
use super::{Ctx, Flow};
use crate::flags::{CcKind, CcOp};
use crate::x64::{Shift, T};

/// ROL, ROR, RCL, RCR on the host. They change only CF and OF: when those are read
/// later (`with_flags`), the guest's flags are put in the host's first, the host
/// rotates, and the result becomes the flag state; otherwise the flag record is left
/// as it was. A memory destination with a CL count stays in the interpreter (a zero
/// count must not write it).
pub fn rotate(ctx: &mut Ctx, with_flags: bool) -> Flow {
    let w = ctx.width(0);
    let op = match ctx.ins.mnemonic() {
        Mnemonic::Rol => Shift::Rol,
        Mnemonic::Ror => Shift::Ror,
        Mnemonic::Rcl => Shift::Rcl,
        _ => Shift::Rcr,
    };
    let count_mask: u64 = if w == 8 { 0x3f } else { 0x1f };
    let count = match ctx.ins.op1_kind() {
        OpKind::Register => None,
        _ => Some((ctx.ins.immediate(1) & count_mask) as u8),
    };
    if count == Some(0) && ctx.ins.op0_kind() != OpKind::Register {
        return Flow::Continue;
    }
    ctx.load_op(0, T::T0);
    if count.is_none() {
        ctx.em.load_gpr(T::T1, 1, 1, false); // CL: the host masks it as the guest does
    }
    if with_flags {
        // Plain moves only from here to the rotate: they keep the host flags.
        ctx.em.all_flags_to_host(ctx.cc, ctx.h.flags);
    }
    if count != Some(0) {
        ctx.em.shift(op, w, T::T0, count);
    }
    if with_flags {
        ctx.em.host_flags_to_state();
        ctx.cc = None;
    }
    // A register is stored even for a zero count: a 32-bit one is zero-extended.
    ctx.store_op(0, T::T0);
    Flow::Continue
}

pub fn translate(ctx: &mut Ctx) -> Flow {
    let w = ctx.width(0);
    let count_mask: u64 = if w == 8 { 0x3f } else { 0x1f };
    let (op, kind) = match ctx.ins.mnemonic() {
        Mnemonic::Shl | Mnemonic::Sal => (Shift::Shl, CcKind::Shl),
        Mnemonic::Shr => (Shift::Shr, CcKind::Shr),
        _ => (Shift::Sar, CcKind::Sar),
    };
    let imm = match ctx.ins.op1_kind() {
        OpKind::Register => None,
        _ => Some(ctx.ins.immediate(1) & count_mask),
    };
    // A 32-bit register destination is written even by a zero count: its upper half
    // is cleared, as for any 32-bit register write.
    let reg32 = w == 4 && ctx.ins.op0_kind() == OpKind::Register;
    if imm == Some(0) {
        if reg32 {
            ctx.load_op(0, T::T0);
            ctx.store_op(0, T::T0);
        }
        return Flow::Continue;
    }
    ctx.load_op(0, T::T0);
    if imm.is_none() {
        ctx.em.load_gpr(T::T1, 1, 1, false); // CL
        ctx.em.and_imm(T::T1, count_mask as u32);
    }
    let skip = ctx.em.label();
    if imm.is_none() {
        ctx.em.jz_t(T::T1, skip);
    }
    if ctx.flags_needed {
        ctx.em.mov(T::T2, T::T0);
    }
    ctx.em.shift(op, w, T::T0, imm.map(|n| n as u8));
    if ctx.flags_needed {
        ctx.em.setcc_host(0x2, T::T1); // CF: the last bit shifted out
    }
    let src2 = (kind == CcKind::Shr).then_some(T::T2);
    set_cc(ctx, CcOp::new(kind, w), Some(T::T0), Some(T::T1), src2);
    ctx.store_op(0, T::T0);
    ctx.em.bind(skip);
    if imm.is_none() && reg32 {
        // CL was 0: T0 still holds the operand (the other path stores it again).
        ctx.store_op(0, T::T0);
    }
    if imm.is_none() {
        // Whether the record changed depends on CL at run time.
        ctx.cc = None;
    }
    Flow::Continue
}
