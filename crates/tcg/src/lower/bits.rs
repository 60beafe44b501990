//! Bit instructions: BT, BTS, BTR, BTC (register, immediate and register bit offsets
//! into memory), BSF, BSR, TZCNT, LZCNT, POPCNT.
//!
//! Flags the SDM leaves undefined get whatever the record chosen for the defined
//! ones gives them.

use iced_x86::{Mnemonic, OpKind};

use super::flags::Rec;
use super::int::{mem_addr, read_at};
use super::{Flow, Lower};
use crate::flags::{CcKind, CcOp};
use crate::ir::{Bin, Cond, Global, Test, Un};
use crate::translate::{address_bits, gpr, seg_index};

pub fn lower(l: &mut Lower) -> Flow {
    use Mnemonic::*;
    match l.ins.mnemonic() {
        Bt | Bts | Btr | Btc => bit_test(l),
        _ => scan(l),
    }
    Flow::Continue
}

/// BT/BTS/BTR/BTC: CF = the selected bit, which BTS/BTR/BTC then set, clear or flip;
/// the other flags stay.
fn bit_test(l: &mut Lower) {
    let ins = l.ins;
    let w = l.width(0);
    let bits = 8 * w as u64;
    let off = l.read(1);
    let addr = match (ins.op0_kind(), ins.op1_kind()) {
        (OpKind::Memory, OpKind::Register) => {
            // A register bit offset is signed and may select a bit outside the operand:
            // address the operand-sized unit that holds it.
            let so = l.b.un(Un::Sext, w, off);
            let units = l.b.bin_k(Bin::Sar, 8, so, bits.trailing_zeros() as u64);
            let bytes = l.b.bin_k(Bin::Shl, 8, units, w.trailing_zeros() as u64);
            let ea = l.effective_address();
            let asize = (address_bits(ins, l.mode.bits) / 8) as u8;
            let ea = l.b.bin(Bin::Add, asize, ea, bytes);
            Some(l.add_segment(seg_index(ins.memory_segment()), ea))
        }
        _ => mem_addr(l, 0),
    };
    let bit = l.b.bin_k(Bin::And, 8, off, bits - 1);
    let v = read_at(l, 0, addr);
    let t = l.b.bin(Bin::Shr, 8, v, bit);
    let cf = l.b.bin_k(Bin::And, 8, t, 1);
    let one = l.b.konst(1);
    let m = l.b.bin(Bin::Shl, 8, one, bit);
    let new = match ins.mnemonic() {
        Mnemonic::Bts => Some(l.b.bin(Bin::Or, w, v, m)),
        Mnemonic::Btr => {
            let nm = l.b.un(Un::Not, 8, m);
            Some(l.b.bin(Bin::And, w, v, nm))
        }
        Mnemonic::Btc => Some(l.b.bin(Bin::Xor, w, v, m)),
        _ => None,
    };
    if let Some(new) = new {
        match addr {
            Some(a) => l.store(w, a, new),
            None => l.write(0, new, None),
        }
    }
    l.flags.set_cf(cf);
}

/// BSF, BSR (ZF = source is 0, the destination then unchanged), TZCNT, LZCNT (CF =
/// source is 0, ZF = result is 0), POPCNT (ZF = source is 0, the other five clear).
fn scan(l: &mut Lower) {
    let ins = l.ins;
    let w = l.width(0);
    let bits = 8 * w as u64;
    let src = l.read(1);
    let zero = l.b.konst(0);
    match ins.mnemonic() {
        Mnemonic::Bsf | Mnemonic::Bsr => {
            let r = if ins.mnemonic() == Mnemonic::Bsf {
                l.b.un(Un::Ctz, w, src)
            } else {
                let c = l.b.un(Un::Clz, w, src);
                let top = l.b.konst(bits - 1);
                l.b.bin(Bin::Sub, 8, top, c)
            };
            let (n, hi) = gpr(ins.op0_register());
            let cur = l.b.get(Global::Gpr(n as u8));
            let new = l.merge_gpr(n, w, hi, r);
            let v = l.b.select(Test { c: Cond::Ne, w, a: src, b: zero }, new, cur);
            l.b.set(Global::Gpr(n as u8), v);
            l.flags.set(Rec { op: CcOp::new(CcKind::Logic, w), dst: src, src: zero, src2: zero, a: None });
        }
        Mnemonic::Tzcnt | Mnemonic::Lzcnt => {
            let op = if ins.mnemonic() == Mnemonic::Tzcnt { Un::Ctz } else { Un::Clz };
            let r = l.b.un(op, w, src);
            l.write(0, r, None);
            // A Mul record: CF (= OF) from its src, ZF from the result.
            let z = l.b.setcond(Test { c: Cond::Eq, w, a: src, b: zero });
            l.flags.set(Rec { op: CcOp::new(CcKind::Mul, w), dst: r, src: z, src2: zero, a: None });
        }
        _ => {
            let r = l.b.un(Un::Popcnt, w, src);
            l.write(0, r, None);
            let z = l.b.setcond(Test { c: Cond::Eq, w, a: src, b: zero });
            let f = l.b.bin_k(Bin::Shl, 8, z, 6);
            l.flags.set(Rec { op: CcOp::new(CcKind::Flags, 8), dst: zero, src: f, src2: zero, a: None });
        }
    }
}
