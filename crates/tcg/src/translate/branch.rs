//! JMP, Jcc, LOOP, JrCXZ, SETcc and CMOVcc. A condition is decided by the host: the
//! guest's flags are put in the host's flags first (see `Emitter::flags_to_host`).
//! Direct branches end the block with chainable exits.

use iced_x86::{ConditionCode, Mnemonic, OpKind};

use super::{Ctx, Flow};
use crate::flags::Width;
use crate::x64::T;

const RCX: usize = 1;

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
fn nibble(cc: ConditionCode) -> u8 {
    cc as u8 - 1
}

/// The counter width of LOOP/JrCXZ: the address size.
fn counter_width(ctx: &Ctx) -> Width {
    match ctx.ins.op_code().address_size() {
        16 => 2,
        32 => 4,
        64 => 8,
        _ => (ctx.mode.bits / 8) as Width,
    }
}

/// Ends the block with a two-way branch: `taken` to the instruction's target.
fn two_way(ctx: &mut Ctx, taken: dynasmrt::DynamicLabel) -> Flow {
    ctx.em.exit_chain(ctx.next);
    ctx.em.bind(taken);
    ctx.em.exit_chain(ctx.ins.near_branch_target());
    Flow::End
}

pub fn translate(ctx: &mut Ctx) -> Flow {
    let ins = ctx.ins;
    let m = ins.mnemonic();
    match m {
        Mnemonic::Jmp => match ins.op0_kind() {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                if ins.near_branch_target() == ctx.block_rip {
                    let head = ctx.em.loop_head_label();
                    ctx.em.jmp(head);
                } else {
                    ctx.em.exit_chain(ins.near_branch_target());
                }
                Flow::End
            }
            OpKind::Register | OpKind::Memory if !ins.is_jmp_far_indirect() => {
                ctx.load_op(0, T::T0);
                ctx.em.store_rip_t(T::T0);
                ctx.em.exit_indirect(T::T0);
                Flow::End
            }
            _ => ctx.interp(),
        },
        Mnemonic::Loop | Mnemonic::Jcxz | Mnemonic::Jecxz | Mnemonic::Jrcxz => {
            let w = counter_width(ctx);
            let not_taken = ctx.em.label();
            let taken = ctx.em.label();
            ctx.em.load_gpr(T::T0, RCX, w, false);
            if m == Mnemonic::Loop {
                ctx.em.add_imm(T::T0, w, -1);
                ctx.em.zero_extend(T::T0, w);
                ctx.em.store_gpr(RCX, T::T0, w, false);
                ctx.em.jz_t(T::T0, not_taken);
                ctx.em.jmp(taken);
            } else {
                ctx.em.jz_t(T::T0, taken);
                ctx.em.jmp(not_taken);
            }
            ctx.em.bind(not_taken);
            two_way(ctx, taken)
        }
        _ if is_setcc(m) => {
            let cc = nibble(ins.condition_code());
            ctx.em.flags_to_host(ctx.cc, cc, ctx.h.flags);
            ctx.em.setcc_host(cc, T::T0);
            ctx.store_op(0, T::T0);
            Flow::Continue
        }
        _ if is_cmovcc(m) => {
            let mem = ins.op1_kind() == OpKind::Memory;
            if mem {
                ctx.load_op(1, T::T1);
            }
            ctx.em.flags_to_host(ctx.cc, nibble(ins.condition_code()), ctx.h.flags);
            // Plain register moves from here on: they leave the host flags alone.
            if !mem {
                ctx.load_op(1, T::T1);
            }
            ctx.load_op(0, T::T0);
            ctx.em.cmov_host(nibble(ins.condition_code()), T::T0, T::T1);
            ctx.store_op(0, T::T0);
            Flow::Continue
        }
        _ => {
            // Jcc: the taken side leaves out of line; the block goes on along the
            // fall-through.
            let taken = ctx.em.label();
            let cc = nibble(ins.condition_code());
            ctx.em.flags_to_host(ctx.cc, cc, ctx.h.flags);
            if ins.near_branch_target() == ctx.block_rip {
                // A loop onto this block: stay in it, registers cached.
                let head = ctx.em.loop_head_label();
                ctx.em.jcc_host(cc, head);
            } else {
                ctx.em.jcc_host(cc, taken);
                ctx.em.defer_chain_exit(taken, ins.near_branch_target());
            }
            Flow::Continue
        }
    }
}
