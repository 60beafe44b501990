//! PUSH, POP, near CALL and RET. Stack addresses use SS and the stack width (SS.B, or
//! 64 bits in long mode); RSP is written only after the memory access succeeded, so a
//! fault leaves it as it was.

use iced_x86::{Mnemonic, OpKind};

use super::{Ctx, Flow};
use crate::flags::Width;
use crate::state::SS;
use crate::x64::{OnCodeWrite, T};

const RSP: usize = 4;

/// The operand size an instruction's encoding implies (for PUSH imm, CALL, RET).
fn encoded_width(ctx: &Ctx) -> Width {
    match ctx.ins.op_code().operand_size() {
        16 => 2,
        32 => 4,
        64 => 8,
        _ => ctx.mode.stack_width,
    }
}

/// Pushes `value` (a temporary other than T1), `w` bytes. `call`: the instruction
/// ends the block right after the push.
fn push(ctx: &mut Ctx, value: T, w: Width, call: bool) {
    let sw = ctx.mode.stack_width;
    ctx.em.load_gpr(T::T1, RSP, sw, false);
    ctx.em.add_imm(T::T1, sw, -(w as i32));
    ctx.em.addr_from(T::T1);
    ctx.add_segment(SS);
    // A push onto translated code leaves the block after it, RSP written.
    let on_code =
        if call { OnCodeWrite::Continue } else { OnCodeWrite::Exit { next: ctx.next, then: Some((RSP, T::T1, sw)) } };
    ctx.em.store_mem(value, w, ctx.ip, on_code, ctx.h);
    ctx.em.store_gpr(RSP, T::T1, sw, false);
}

/// Pops `w` bytes into T0.
fn pop(ctx: &mut Ctx, w: Width) {
    let sw = ctx.mode.stack_width;
    ctx.em.load_gpr(T::T1, RSP, sw, false);
    ctx.em.addr_from(T::T1);
    ctx.add_segment(SS);
    ctx.em.load_mem(T::T0, w, ctx.ip, ctx.h);
    ctx.em.add_imm(T::T1, sw, w as i32);
    ctx.em.store_gpr(RSP, T::T1, sw, false);
}

pub fn translate(ctx: &mut Ctx) -> Flow {
    let ins = ctx.ins;
    let sreg = |i: u32| ins.op_kind(i) == OpKind::Register && ins.op_register(i).is_segment_register();
    match ins.mnemonic() {
        Mnemonic::Push if !sreg(0) => {
            let w = if ins.op0_kind() == OpKind::Register || ins.op0_kind() == OpKind::Memory {
                ctx.width(0)
            } else {
                encoded_width(ctx)
            };
            ctx.load_op(0, T::T0);
            push(ctx, T::T0, w, false);
            Flow::Continue
        }
        Mnemonic::Pop if !sreg(0) => {
            let w = ctx.width(0);
            pop(ctx, w);
            ctx.store_op(0, T::T0);
            Flow::Continue
        }
        Mnemonic::Call if ins.op0_kind() != OpKind::FarBranch16 && ins.op0_kind() != OpKind::FarBranch32 => {
            let near_rel = matches!(ins.op0_kind(), OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64);
            if ins.op0_kind() == OpKind::Memory && ins.is_call_far_indirect() {
                return ctx.interp();
            }
            let w = if near_rel { encoded_width(ctx) } else { ctx.width(0) };
            if !near_rel {
                ctx.load_op(0, T::T2);
            }
            ctx.em.load_imm(T::T0, ctx.next);
            push(ctx, T::T0, w, true);
            if near_rel {
                ctx.em.exit_chain(ins.near_branch_target());
            } else {
                ctx.em.store_rip_t(T::T2);
                ctx.em.exit_indirect(T::T2);
            }
            Flow::End
        }
        Mnemonic::Ret => {
            let w = encoded_width(ctx);
            pop(ctx, w);
            if ins.op_count() == 1 {
                let sw = ctx.mode.stack_width;
                ctx.em.add_imm(T::T1, sw, ins.immediate16() as i32);
                ctx.em.store_gpr(RSP, T::T1, sw, false);
            }
            ctx.em.store_rip_t(T::T0);
            ctx.em.exit_indirect(T::T0);
            Flow::End
        }
        _ => ctx.interp(),
    }
}
