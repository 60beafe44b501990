//! MOV, MOVZX, MOVSX, MOVSXD, LEA, XCHG between registers, NOP.

use iced_x86::{Mnemonic, OpKind};

use super::{Ctx, Flow};
use crate::x64::T;

pub fn translate(ctx: &mut Ctx) -> Flow {
    let ins = ctx.ins;
    match ins.mnemonic() {
        Mnemonic::Nop => Flow::Continue,
        Mnemonic::Mov => {
            let special = (0..2).any(|i| {
                ins.op_kind(i) == OpKind::Register && {
                    let r = ins.op_register(i);
                    r.is_segment_register() || r.is_cr() || r.is_dr()
                }
            });
            if special {
                return ctx.interp();
            }
            ctx.load_op(1, T::T0);
            ctx.store_op(0, T::T0);
            Flow::Continue
        }
        Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd => {
            let from = ctx.width(1);
            ctx.load_op(1, T::T0);
            ctx.em.extend(T::T0, from, ins.mnemonic() != Mnemonic::Movzx);
            ctx.store_op(0, T::T0);
            Flow::Continue
        }
        Mnemonic::Lea => {
            // The effective address only: no segment base.
            ctx.effective_address();
            ctx.em.addr_to(T::T0);
            ctx.store_op(0, T::T0);
            Flow::Continue
        }
        Mnemonic::Xchg if ins.op0_kind() == OpKind::Register && ins.op1_kind() == OpKind::Register => {
            ctx.load_op(0, T::T0);
            ctx.load_op(1, T::T1);
            ctx.store_op(0, T::T1);
            ctx.store_op(1, T::T0);
            Flow::Continue
        }
        // XCHG with memory is locked: the interpreter does it as one access.
        _ => ctx.interp(),
    }
}
