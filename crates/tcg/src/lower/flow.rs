//! Stack and control flow: PUSH, POP, LEAVE, CALL, RET, JMP, Jcc, LOOP, JrCXZ, SETcc and
//! CMOVcc. Stack addresses use SS and the stack width (SS.B, or 64 bits in long mode);
//! RSP is written only after the memory access succeeded, so a fault leaves it as it
//! was. Direct branches leave through chainable exits; a branch to the block's own
//! start stays in the block (a loop).

use iced_x86::{Mnemonic, OpKind};

use super::{is_cmovcc, is_setcc, nibble, Flow, Lower};
use crate::flags::Width;
use crate::ir::{Bin, Cond, Global, Op, Test, Un, Val};

const RCX: usize = 1;
const RSP: usize = 4;
const RBP: usize = 5;

/// The operand size an instruction's encoding implies (PUSH imm, CALL, RET).
fn encoded_width(l: &Lower) -> Width {
    match l.ins.op_code().operand_size() {
        16 => 2,
        32 => 4,
        64 => 8,
        _ => l.mode.stack_width,
    }
}

/// Pushes `v`, `w` bytes.
fn push(l: &mut Lower, v: Val, w: Width) {
    let sw = l.mode.stack_width;
    let sp = l.b.get(Global::Gpr(RSP as u8));
    let nsp = l.b.bin_k(Bin::Sub, sw, sp, w as u64);
    let addr = l.stack_addr(nsp);
    l.store(w, addr, v);
    l.set_gpr(RSP, sw, false, nsp);
}

/// Pops `w` bytes.
fn pop(l: &mut Lower, w: Width) -> Val {
    let sw = l.mode.stack_width;
    let sp = l.b.get(Global::Gpr(RSP as u8));
    let zsp = l.b.un(Un::Zext, sw, sp);
    let addr = l.stack_addr(zsp);
    let v = l.load(w, addr);
    let nsp = l.b.bin_k(Bin::Add, sw, sp, w as u64);
    l.set_gpr(RSP, sw, false, nsp);
    v
}

/// A direct branch to `target`: a loop when it is the block's start.
fn jump(l: &mut Lower, target: u64) {
    if target == l.block_rip {
        l.exit(Op::Loop { t: None });
    } else {
        l.exit(Op::Exit { rip: target });
    }
}

/// Leaves to `target` when `t` holds; goes on otherwise.
fn branch_if(l: &mut Lower, t: Test, target: u64) {
    if target == l.block_rip {
        l.exit(Op::Loop { t: Some(t) });
    } else {
        l.exit(Op::ExitIf { t, rip: target });
    }
}

pub fn lower(l: &mut Lower) -> Flow {
    let ins = l.ins;
    let m = ins.mnemonic();
    let near = |k: OpKind| matches!(k, OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64);
    match m {
        Mnemonic::Push => {
            let w = match ins.op0_kind() {
                OpKind::Register | OpKind::Memory => l.width(0),
                _ => encoded_width(l),
            };
            let v = match ins.op0_kind() {
                OpKind::Register | OpKind::Memory => l.read(0),
                // PUSH imm: the immediate sign-extended to the operand size.
                _ => l.b.konst(ins.immediate(0)),
            };
            push(l, v, w);
        }
        Mnemonic::Pop => {
            let w = l.width(0);
            let v = pop(l, w);
            l.write(0, v, None);
        }
        Mnemonic::Pushf | Mnemonic::Pushfd | Mnemonic::Pushfq => {
            // The status flags from the lazy record, the others as they are; VM and RF
            // read as 0 in the pushed image.
            use quern_core::regs::flags::STATUS;
            let w = encoded_width(l);
            let status = l.flags.all(&mut l.b);
            let status = l.b.bin_k(Bin::And, 8, status, STATUS);
            let e = l.b.get(Global::Eflags);
            let rest = l.b.bin_k(Bin::And, 8, e, !(STATUS | 1 << 16 | 1 << 17));
            let f = l.b.bin(Bin::Or, 8, rest, status);
            push(l, f, w);
        }
        Mnemonic::Leave => {
            // RSP = RBP (at the stack width), then POP rBP; RSP only once the load
            // succeeded.
            let w = encoded_width(l);
            let sw = l.mode.stack_width;
            let bp = l.b.get(Global::Gpr(RBP as u8));
            let zbp = l.b.un(Un::Zext, sw, bp);
            let addr = l.stack_addr(zbp);
            let v = l.load(w, addr);
            let nsp = l.b.bin_k(Bin::Add, sw, bp, w as u64);
            l.set_gpr(RSP, sw, false, nsp);
            l.set_gpr(RBP, w, false, v);
        }
        Mnemonic::Call if near(ins.op0_kind()) => {
            let w = encoded_width(l);
            let ret = l.b.konst(l.next);
            push(l, ret, w);
            jump(l, ins.near_branch_target());
            return Flow::End;
        }
        Mnemonic::Call
            if matches!(ins.op0_kind(), OpKind::Register | OpKind::Memory) && !ins.is_call_far_indirect() =>
        {
            let w = l.width(0);
            let t = l.read(0);
            let t = l.b.un(Un::Zext, w, t);
            let ret = l.b.konst(l.next);
            push(l, ret, w);
            l.exit(Op::ExitJump { rip: t });
            return Flow::End;
        }
        Mnemonic::Ret => {
            let w = encoded_width(l);
            let v = pop(l, w);
            if ins.op_count() == 1 {
                let sw = l.mode.stack_width;
                let sp = l.b.get(Global::Gpr(RSP as u8));
                let nsp = l.b.bin_k(Bin::Add, sw, sp, ins.immediate16() as u64);
                l.set_gpr(RSP, sw, false, nsp);
            }
            l.exit(Op::ExitJump { rip: v });
            return Flow::End;
        }
        Mnemonic::Jmp if near(ins.op0_kind()) => {
            jump(l, ins.near_branch_target());
            return Flow::End;
        }
        Mnemonic::Jmp if matches!(ins.op0_kind(), OpKind::Register | OpKind::Memory) && !ins.is_jmp_far_indirect() => {
            let w = l.width(0);
            let t = l.read(0);
            let t = l.b.un(Un::Zext, w, t);
            l.exit(Op::ExitJump { rip: t });
            return Flow::End;
        }
        Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne | Mnemonic::Jcxz | Mnemonic::Jecxz | Mnemonic::Jrcxz => {
            let w = match ins.op_code().address_size() {
                16 => 2,
                32 => 4,
                64 => 8,
                _ => (l.mode.bits / 8) as Width,
            };
            let c = l.b.get(Global::Gpr(RCX as u8));
            let zero = l.b.konst(0);
            let t = if matches!(m, Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne) {
                let n = l.b.bin_k(Bin::Sub, w, c, 1);
                l.set_gpr(RCX, w, false, n);
                let counting = Test { c: Cond::Ne, w, a: n, b: zero };
                if m == Mnemonic::Loop {
                    counting
                } else {
                    // LOOPE/LOOPNE also need ZF (set / clear).
                    let z = l.flags.test(&mut l.b, if m == Mnemonic::Loope { 0x4 } else { 0x5 });
                    let a = l.b.setcond(counting);
                    let b = l.b.setcond(z);
                    let both = l.b.bin(Bin::And, 8, a, b);
                    Test { c: Cond::Ne, w: 1, a: both, b: zero }
                }
            } else {
                Test { c: Cond::Eq, w, a: c, b: zero }
            };
            branch_if(l, t, ins.near_branch_target());
            let next = l.next;
            jump(l, next);
            return Flow::End;
        }
        _ if crate::translate::is_jcc(ins) => {
            let t = l.flags.test(&mut l.b, nibble(ins.condition_code()));
            branch_if(l, t, ins.near_branch_target());
        }
        _ if is_setcc(m) => {
            let t = l.flags.test(&mut l.b, nibble(ins.condition_code()));
            let v = l.b.setcond(t);
            l.write(0, v, None);
        }
        _ if is_cmovcc(m) => {
            // The source is read (and may fault) whatever the condition.
            let src = l.read(1);
            let t = l.flags.test(&mut l.b, nibble(ins.condition_code()));
            let old = l.read(0);
            let v = l.b.select(t, src, old);
            l.write(0, v, None);
        }
        _ => return l.interp(),
    }
    Flow::Continue
}
