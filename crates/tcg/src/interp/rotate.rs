//! ROL, ROR, RCL, RCR, SHLD, SHRD.

use iced_x86::{Instruction, Mnemonic, OpKind};
use quern_core::regs::flags::{CF, OF};

use super::{Operands, Step};
use crate::cpu::{Cpu, Result};
use crate::flags::{mask, CcKind};

/// Whether `ins` is a rotate or double shift (`exec` returns `Some` or an error for it).
pub fn handles(ins: &Instruction) -> bool {
    use Mnemonic::*;
    matches!(ins.mnemonic(), Rol | Ror | Rcl | Rcr | Shld | Shrd)
}

/// Runs `ins` if it is a rotate or double shift.
pub fn exec(cpu: &mut Cpu, ins: &Instruction) -> Result<Option<Step>> {
    use Mnemonic::*;
    let m = ins.mnemonic();
    if !handles(ins) {
        return Ok(None);
    }
    let mut o = Operands { cpu, ins };
    let w = o.width(0);
    let bits = u32::from(w) * 8;
    let count_op = if matches!(m, Shld | Shrd) { 2 } else { 1 };
    let raw = match ins.op_kind(count_op) {
        OpKind::Register => o.cpu.state.gpr[1] & 0xff,
        _ => ins.immediate(count_op),
    };
    let count = (raw & if w == 8 { 0x3f } else { 0x1f }) as u32;
    let v = o.read(0)?;
    // A zero count changes nothing, except that a 32-bit register destination is still
    // written (its upper half cleared), as on the CPU.
    let zero_extend_only = |o: &mut Operands| -> Result<Option<Step>> {
        if ins.op0_kind() == OpKind::Register && w == 4 {
            o.write(0, v)?;
        }
        Ok(Some(Step::Next))
    };
    if count == 0 {
        return zero_extend_only(&mut o);
    }
    let msk = mask(w);
    let f = o.cpu.state.flags();
    let cf_in = f & CF;
    let (res, cf, of) = match m {
        Rol => {
            let n = count % bits;
            let r = if n == 0 { v } else { ((v << n) | (v >> (bits - n))) & msk };
            let cf = r & 1;
            (r, cf, ((r >> (bits - 1)) & 1) ^ cf)
        }
        Ror => {
            let n = count % bits;
            let r = if n == 0 { v } else { ((v >> n) | (v << (bits - n))) & msk };
            let top = (r >> (bits - 1)) & 1;
            (r, top, top ^ ((r >> (bits - 2)) & 1))
        }
        Rcl | Rcr => {
            // Rotate through carry: a (bits+1)-bit rotation done bit by bit. A count that
            // is a multiple of bits+1 leaves operand and CF as they were, but the CPU
            // still writes OF from the (unchanged) result, as for any nonzero count.
            let n = count % (bits + 1);
            let (mut r, mut c) = (v, cf_in);
            for _ in 0..n {
                if m == Rcl {
                    let out = (r >> (bits - 1)) & 1;
                    r = ((r << 1) | c) & msk;
                    c = out;
                } else {
                    let out = r & 1;
                    r = (r >> 1) | (c << (bits - 1));
                    c = out;
                }
            }
            let of = if m == Rcl { ((r >> (bits - 1)) & 1) ^ c } else { ((r >> (bits - 1)) ^ (r >> (bits - 2))) & 1 };
            (r, c, of)
        }
        _ => {
            // SHLD/SHRD: shift in bits from the source register.
            let src = o.read(1)?;
            if count > bits {
                // Undefined result for 16-bit operands with count > 16: keep the operand.
                return Ok(Some(Step::Next));
            }
            let wide: u128 = if m == Shld {
                ((u128::from(v) << bits) | u128::from(src)) << count >> bits
            } else {
                ((u128::from(src) << bits) | u128::from(v)) >> count
            };
            let r = (wide as u64) & msk;
            let cf = if m == Shld { (v >> (bits - count)) & 1 } else { (v >> (count - 1)) & 1 };
            let of = ((r ^ v) >> (bits - 1)) & 1;
            o.write(0, r)?;
            let st = crate::flags::compute(crate::flags::CcOp::new(CcKind::Logic, w), r, 0, 0, 0);
            let nf = (f & !quern_core::regs::flags::STATUS) | (st & !(CF | OF)) | cf | (of << 11);
            o.cpu.state.set_flags(nf);
            return Ok(Some(Step::Next));
        }
    };
    o.write(0, res)?;
    // Rotates change only CF and OF.
    let nf = (f & !(CF | OF)) | cf | (of << 11);
    o.cpu.state.set_flags(nf);
    Ok(Some(Step::Next))
}
