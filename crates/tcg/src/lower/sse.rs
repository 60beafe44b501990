//! SSE and SSE2 on XMM registers: moves, logic, integer arithmetic, compares,
//! shifts, shuffles, packs and unpacks, floating-point arithmetic, compares and
//! conversions.
//!
//! Lowered only when the block's mode lets SSE run (CR0.EM, CR0.TS clear, CR4.OSFXSR
//! set) and, for floating point, when MXCSR masks every exception; otherwise, and for
//! the MMX forms, the instruction runs in the interpreter, which raises #UD, #NM or
//! #XM. A 16-byte memory operand of an aligned form raises #GP(0) when misaligned
//! ([`Op::VLoad`]'s `align`). A memory source is loaded into a vector temporary first,
//! so a fault leaves every register as it was.

use iced_x86::{Code, EncodingKind, Mnemonic, OpKind, Register};

use super::flags::Rec;
use super::{Flow, Lower};
use crate::flags::{CcKind, CcOp, Width};
use crate::ir::{Cvt, FOp, FShape, Op, VBin, VRead, VReg, VWrite};

/// The vector temporary memory operands are loaded into.
const MEM: VReg = VReg::Tmp(0);

/// Whether `ins` is an SSE instruction this family takes: one with an XMM register
/// operand, or a float → integer conversion from memory.
pub fn is_sse(ins: &iced_x86::Instruction) -> bool {
    use Mnemonic::*;
    (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Register && ins.op_register(i).is_xmm())
        || matches!(ins.mnemonic(), Cvtss2si | Cvttss2si | Cvtsd2si | Cvttsd2si)
}

pub fn lower(l: &mut Lower) -> Flow {
    let ins = l.ins;
    let mmx = (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Register && ins.op_register(i).is_mm());
    if !l.mode.sse || mmx || ins.encoding() != EncodingKind::Legacy {
        return l.interp();
    }
    match one(l) {
        Some(()) => Flow::Continue,
        None => l.interp(),
    }
}

fn xmm(r: Register) -> VReg {
    VReg::Xmm(r.number() as u8)
}

fn is_xmm(l: &Lower, i: u32) -> bool {
    l.ins.op_kind(i) == OpKind::Register && l.ins.op_register(i).is_xmm()
}

/// Whether the memory operand of the current instruction must be 16-byte aligned.
fn aligned(l: &Lower) -> bool {
    l.ins.memory_size().size() == 16
        && !matches!(l.ins.mnemonic(), Mnemonic::Movups | Mnemonic::Movupd | Mnemonic::Movdqu)
}

fn vload(l: &mut Lower, d: VReg) {
    let w = l.ins.memory_size().size() as Width;
    let align = aligned(l);
    l.flags.sync(&mut l.b);
    let addr = l.ea();
    l.b.push(Op::VLoad { w, d, addr, align });
}

fn vstore(l: &mut Lower, s: VReg) {
    let w = l.ins.memory_size().size() as Width;
    let align = aligned(l);
    l.flags.sync(&mut l.b);
    l.stored = true;
    let addr = l.ea();
    l.b.push(Op::VStore { w, addr, s, align });
}

/// Vector operand `i`: its register, or the memory operand loaded into [`MEM`].
fn src(l: &mut Lower, i: u32) -> VReg {
    if l.ins.op_kind(i) == OpKind::Memory {
        vload(l, MEM);
        MEM
    } else {
        xmm(l.ins.op_register(i))
    }
}

/// `op0 = op0 op op1 (, imm)`.
fn binary(l: &mut Lower, op: VBin) -> Option<()> {
    if !is_xmm(l, 0) {
        return None;
    }
    let imm = if l.ins.op_count() == 3 { l.ins.immediate(2) as u8 } else { 0 };
    let d = xmm(l.ins.op0_register());
    let b = src(l, 1);
    l.b.vbin(op, d, d, b, imm);
    Some(())
}

/// The integer, logic and shuffle operations of the two-operand forms.
fn int_op(m: Mnemonic) -> Option<VBin> {
    use Mnemonic::*;
    use VBin::*;
    Some(match m {
        Pand | Andps | Andpd => VBin::And,
        Pandn | Andnps | Andnpd => AndN,
        Por | Orps | Orpd => VBin::Or,
        Pxor | Xorps | Xorpd => VBin::Xor,
        Paddb => AddB,
        Paddw => AddW,
        Paddd => AddD,
        Paddq => AddQ,
        Psubb => SubB,
        Psubw => SubW,
        Psubd => SubD,
        Psubq => SubQ,
        Paddusb => AddSatUB,
        Paddusw => AddSatUW,
        Paddsb => AddSatSB,
        Paddsw => AddSatSW,
        Psubusb => SubSatUB,
        Psubusw => SubSatUW,
        Psubsb => SubSatSB,
        Psubsw => SubSatSW,
        Pcmpeqb => CmpEqB,
        Pcmpeqw => CmpEqW,
        Pcmpeqd => CmpEqD,
        Pcmpgtb => CmpGtB,
        Pcmpgtw => CmpGtW,
        Pcmpgtd => CmpGtD,
        Pminub => MinUB,
        Pmaxub => MaxUB,
        Pminsw => MinSW,
        Pmaxsw => MaxSW,
        Pavgb => AvgB,
        Pavgw => AvgW,
        Pmullw => MulLoW,
        Pmulhw => MulHiW,
        Pmulhuw => MulHiUW,
        Pmuludq => MulUDQ,
        Pmaddwd => MAddWD,
        Psadbw => SadBW,
        Punpcklbw => UnpackLoB,
        Punpcklwd => UnpackLoW,
        Punpckldq | Unpcklps => UnpackLoD,
        Punpcklqdq | Unpcklpd => UnpackLoQ,
        Punpckhbw => UnpackHiB,
        Punpckhwd => UnpackHiW,
        Punpckhdq | Unpckhps => UnpackHiD,
        Punpckhqdq | Unpckhpd => UnpackHiQ,
        Packsswb => PackSSWB,
        Packssdw => PackSSDW,
        Packuswb => PackUSWB,
        Pshufd => ShufD,
        Pshuflw => ShufLoW,
        Pshufhw => ShufHiW,
        Shufps => ShufPs,
        Shufpd => ShufPd,
        _ => return None,
    })
}

/// Shifts by a vector count, and by an immediate.
fn shift_op(m: Mnemonic, imm: bool) -> Option<VBin> {
    use Mnemonic::*;
    use VBin::*;
    Some(match (m, imm) {
        (Psllw, false) => SllW,
        (Pslld, false) => SllD,
        (Psllq, false) => SllQ,
        (Psrlw, false) => SrlW,
        (Psrld, false) => SrlD,
        (Psrlq, false) => SrlQ,
        (Psraw, false) => SraW,
        (Psrad, false) => SraD,
        (Psllw, true) => SllWI,
        (Pslld, true) => SllDI,
        (Psllq, true) => SllQI,
        (Psrlw, true) => SrlWI,
        (Psrld, true) => SrlDI,
        (Psrlq, true) => SrlQI,
        (Psraw, true) => SraWI,
        (Psrad, true) => SraDI,
        (Pslldq, true) => SllDQI,
        (Psrldq, true) => SrlDQI,
        _ => return None,
    })
}

/// Floating-point arithmetic and compares.
fn float_op(m: Mnemonic) -> Option<(FOp, FShape)> {
    use FShape::*;
    use Mnemonic::*;
    Some(match m {
        Addps => (FOp::Add, Ps),
        Addpd => (FOp::Add, Pd),
        Addss => (FOp::Add, Ss),
        Addsd => (FOp::Add, Sd),
        Subps => (FOp::Sub, Ps),
        Subpd => (FOp::Sub, Pd),
        Subss => (FOp::Sub, Ss),
        Subsd => (FOp::Sub, Sd),
        Mulps => (FOp::Mul, Ps),
        Mulpd => (FOp::Mul, Pd),
        Mulss => (FOp::Mul, Ss),
        Mulsd => (FOp::Mul, Sd),
        Divps => (FOp::Div, Ps),
        Divpd => (FOp::Div, Pd),
        Divss => (FOp::Div, Ss),
        Divsd => (FOp::Div, Sd),
        Minps => (FOp::Min, Ps),
        Minpd => (FOp::Min, Pd),
        Minss => (FOp::Min, Ss),
        Minsd => (FOp::Min, Sd),
        Maxps => (FOp::Max, Ps),
        Maxpd => (FOp::Max, Pd),
        Maxss => (FOp::Max, Ss),
        Maxsd => (FOp::Max, Sd),
        Sqrtps => (FOp::Sqrt, Ps),
        Sqrtpd => (FOp::Sqrt, Pd),
        Sqrtss => (FOp::Sqrt, Ss),
        Sqrtsd => (FOp::Sqrt, Sd),
        Cmpps => (FOp::Cmp, Ps),
        Cmppd => (FOp::Cmp, Pd),
        Cmpss => (FOp::Cmp, Ss),
        Cmpsd => (FOp::Cmp, Sd),
        _ => return None,
    })
}

fn cvt_op(m: Mnemonic) -> Option<Cvt> {
    use Mnemonic::*;
    Some(match m {
        Cvtss2sd => Cvt::Ss2Sd,
        Cvtsd2ss => Cvt::Sd2Ss,
        Cvtps2pd => Cvt::Ps2Pd,
        Cvtpd2ps => Cvt::Pd2Ps,
        Cvtdq2ps => Cvt::Dq2Ps,
        Cvtdq2pd => Cvt::Dq2Pd,
        Cvtps2dq => Cvt::Ps2Dq,
        Cvttps2dq => Cvt::Tps2Dq,
        Cvtpd2dq => Cvt::Pd2Dq,
        Cvttpd2dq => Cvt::Tpd2Dq,
        _ => return None,
    })
}

/// Lowers the instruction, or returns `None` before emitting anything.
fn one(l: &mut Lower) -> Option<()> {
    use Mnemonic::*;
    let ins = l.ins;
    let m = ins.mnemonic();
    let mem0 = ins.op0_kind() == OpKind::Memory;
    let mem1 = ins.op_count() > 1 && ins.op1_kind() == OpKind::Memory;
    if let Some(op) = int_op(m) {
        return binary(l, op);
    }
    if let Some(op) = shift_op(m, ins.op_count() > 1 && ins.op1_kind() == OpKind::Immediate8) {
        if op == VBin::SllDQI || op == VBin::SrlDQI || ins.op1_kind() == OpKind::Immediate8 {
            let d = xmm(ins.op0_register());
            l.b.vbin(op, d, d, d, ins.immediate(1) as u8);
            return Some(());
        }
        return binary(l, op);
    }
    match m {
        Movaps | Movups | Movapd | Movupd | Movdqa | Movdqu | Movntps | Movntpd | Movntdq => {
            if mem0 {
                let s = xmm(ins.op1_register());
                vstore(l, s);
            } else if mem1 {
                vload(l, xmm(ins.op0_register()));
            } else {
                let d = xmm(ins.op0_register());
                l.b.vbin(VBin::Mov, d, d, xmm(ins.op1_register()), 0);
            }
        }
        Movss | Movsd => {
            if mem0 {
                let s = xmm(ins.op1_register());
                vstore(l, s);
            } else if mem1 {
                vload(l, xmm(ins.op0_register()));
            } else {
                let d = xmm(ins.op0_register());
                let op = if m == Movss { VBin::MovLo32 } else { VBin::MovLo64 };
                l.b.vbin(op, d, d, xmm(ins.op1_register()), 0);
            }
        }
        Movd | Movq => match (is_xmm(l, 0), is_xmm(l, 1)) {
            (true, true) => {
                let d = xmm(ins.op0_register());
                l.b.vbin(VBin::MovQ, d, d, xmm(ins.op1_register()), 0);
            }
            (true, false) if mem1 => vload(l, xmm(ins.op0_register())),
            (true, false) => {
                let w = ins.op1_register().size() as Width;
                let v = l.read(1);
                l.b.push(Op::VSet { d: xmm(ins.op0_register()), s: v, w, lane: 0, zero: true });
            }
            (false, true) if mem0 => vstore(l, xmm(ins.op1_register())),
            (false, true) => {
                let w = ins.op0_register().size() as Width;
                let v = l.b.vget(xmm(ins.op1_register()), w, 0);
                l.write(0, v, None);
            }
            _ => return None,
        },
        Movhps | Movhpd | Movlps | Movlpd => {
            let high = matches!(m, Movhps | Movhpd);
            if mem0 {
                let s = xmm(ins.op1_register());
                if high {
                    let v = l.b.vget(s, 8, 1);
                    let a = l.ea();
                    l.store(8, a, v);
                } else {
                    vstore(l, s);
                }
            } else if mem1 {
                let d = xmm(ins.op0_register());
                vload(l, MEM);
                l.b.vbin(if high { VBin::MovLH } else { VBin::MovLo64 }, d, d, MEM, 0);
            } else {
                return None;
            }
        }
        Movlhps | Movhlps => {
            let d = xmm(ins.op0_register());
            let op = if m == Movlhps { VBin::MovLH } else { VBin::MovHL };
            l.b.vbin(op, d, d, xmm(ins.op1_register()), 0);
        }
        Pmovmskb | Movmskps | Movmskpd => {
            let op = match m {
                Pmovmskb => VRead::MskB,
                Movmskps => VRead::MskPs,
                _ => VRead::MskPd,
            };
            let s = xmm(ins.op1_register());
            let v = l.b.vread(op, s, s);
            l.write(0, v, None);
        }
        Pextrw if matches!(ins.code(), Code::Pextrw_r32_xmm_imm8 | Code::Pextrw_r64_xmm_imm8) => {
            let v = l.b.vget(xmm(ins.op1_register()), 2, ins.immediate(2) as u8 & 7);
            l.write(0, v, None);
        }
        Pinsrw if is_xmm(l, 0) => {
            let v = l.read(1);
            let d = xmm(ins.op0_register());
            l.b.push(Op::VSet { d, s: v, w: 2, lane: ins.immediate(2) as u8 & 7, zero: false });
        }
        _ if !l.mode.mx_masked => return None,
        _ => return float(l),
    }
    Some(())
}

/// Floating point (MXCSR masks every exception).
fn float(l: &mut Lower) -> Option<()> {
    use Mnemonic::*;
    let ins = l.ins;
    let m = ins.mnemonic();
    if let Some((op, shape)) = float_op(m) {
        if op == FOp::Cmp && ins.op_count() != 3 {
            return None;
        }
        if !is_xmm(l, 0) {
            return None;
        }
        let imm = if op == FOp::Cmp { ins.immediate(2) as u8 & 7 } else { 0 };
        let d = xmm(ins.op0_register());
        let b = src(l, 1);
        l.b.vbin(VBin::Float(op, shape), d, d, b, imm);
        return Some(());
    }
    if let Some(c) = cvt_op(m) {
        return binary(l, VBin::Cvt(c));
    }
    match m {
        Comiss | Ucomiss | Comisd | Ucomisd => {
            let a = xmm(ins.op0_register());
            let b = src(l, 1);
            let op = VRead::Comi { dbl: matches!(m, Comisd | Ucomisd), signal: matches!(m, Comiss | Comisd) };
            let f = l.b.vread(op, a, b);
            let zero = l.b.konst(0);
            l.flags.set(Rec { op: CcOp::new(CcKind::Flags, 8), dst: zero, src: f, src2: zero, a: None });
        }
        Cvtsi2ss | Cvtsi2sd => {
            let w = l.width(1);
            let v = l.read(1);
            let d = xmm(ins.op0_register());
            l.b.push(Op::VWrite { op: VWrite::FromInt { dbl: m == Cvtsi2sd, w }, d, a: d, s: v });
        }
        Cvttss2si | Cvttsd2si | Cvtss2si | Cvtsd2si => {
            let w = ins.op0_register().size() as Width;
            let s = src(l, 1);
            let op =
                VRead::ToInt { dbl: matches!(m, Cvttsd2si | Cvtsd2si), w, trunc: matches!(m, Cvttss2si | Cvttsd2si) };
            let v = l.b.vread(op, s, s);
            l.write(0, v, None);
        }
        _ => return None,
    }
    Some(())
}
