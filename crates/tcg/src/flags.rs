//! Lazy EFLAGS.
//!
//! Arithmetic instructions do not compute the six status flags. They record what they
//! did: the operation and width ([`CcOp`]) and up to three values (`cc_dst` = the
//! result, `cc_src` = the second operand, `cc_src2` = carry-in or the bit shifted out).
//! The flags are computed from that record only when something reads them: a
//! conditional branch (usually inline, by re-running the comparison), PUSHF, an
//! interrupt, or a helper. This is QEMU's scheme; the per-operation formulas below are
//! the one place the flag semantics live.

use quern_core::regs::flags::{AF, CF, OF, PF, SF, ZF};

/// The operation whose result the lazy-flag record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CcKind {
    /// Flags are already in `eflags` (after POPF, SAHF, rotates, helpers).
    Eflags = 0,
    Add,
    /// ADD with carry-in in `cc_src2`.
    Adc,
    Sub,
    /// SUB with borrow-in in `cc_src2`.
    Sbb,
    /// AND/OR/XOR/TEST: CF = OF = 0.
    Logic,
    /// INC: `cc_src2` holds the CF from before (INC leaves CF alone).
    Inc,
    /// DEC: `cc_src2` holds the old CF.
    Dec,
    /// SHL/SAL: bit [`CcOp::cf_pos`] of `cc_src` is the last bit shifted out.
    Shl,
    /// SHR: bit [`CcOp::cf_pos`] of `cc_src` the last bit out, `cc_src2` the original
    /// operand (for OF).
    Shr,
    /// SAR: bit [`CcOp::cf_pos`] of `cc_src` the last bit out.
    Sar,
    /// MUL/IMUL: `cc_src` nonzero when the result did not fit (CF = OF = 1).
    Mul,
    /// NEG: `cc_src` the original operand.
    Neg,
    /// The six status flags themselves, in `cc_src` (after a rotate merged its CF and
    /// OF into the flags before it).
    Flags,
}

/// An operand width in bytes: 1, 2, 4 or 8.
pub type Width = u8;

/// A lazy-flag record's operation and width packed in one byte-sized number, as
/// generated code stores it: kind * 4 + log2(width).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CcOp(pub u32);

impl CcOp {
    pub const EFLAGS: CcOp = CcOp(0);
    /// Set on a record whose CF (and OF) a later instruction replaced: CF is then bit
    /// [`CcOp::ROTATED_CF`] of the operation, OF bit [`CcOp::ROTATED_OF`] when bit
    /// [`CcOp::ROTATED_HAS_OF`] is set (a rotate) and the record's own otherwise (CLC,
    /// BT..), and the low byte names the record the other flags come from. It lets
    /// such flags reach the state without computing the older record's (a rotate
    /// followed by a memory access that may fault, as in MD5 and SHA rounds; a BT at
    /// a block's start, whose older record is only in the state).
    pub const ROTATED: u32 = 1 << 8;
    pub const ROTATED_CF: u32 = 9;
    pub const ROTATED_OF: u32 = 10;
    pub const ROTATED_HAS_OF: u32 = 11;
    /// The ROTATED bits.
    const ROTATED_ALL: u32 = Self::ROTATED | 7 << Self::ROTATED_CF;
    /// Bits 12..17 of a shift's record: where CF is in `cc_src`. A shift by a constant
    /// keeps its operand there and names the bit that went out last, so its fast path
    /// computes nothing for CF; other shifts put CF in bit 0.
    pub const CF_POS: u32 = 12;

    /// A shift's record with CF at bit `pos` of `cc_src`.
    pub fn with_cf_pos(self, pos: u32) -> Self {
        debug_assert!(pos < 64);
        CcOp(self.0 | pos << Self::CF_POS)
    }

    pub fn cf_pos(self) -> u32 {
        (self.0 >> Self::CF_POS) & 63
    }

    pub fn new(kind: CcKind, width: Width) -> Self {
        CcOp((kind as u32) << 2 | width.trailing_zeros())
    }
    pub fn kind(self) -> CcKind {
        match (self.0 >> 2) & 0x3f {
            1 => CcKind::Add,
            2 => CcKind::Adc,
            3 => CcKind::Sub,
            4 => CcKind::Sbb,
            5 => CcKind::Logic,
            6 => CcKind::Inc,
            7 => CcKind::Dec,
            8 => CcKind::Shl,
            9 => CcKind::Shr,
            10 => CcKind::Sar,
            11 => CcKind::Mul,
            12 => CcKind::Neg,
            13 => CcKind::Flags,
            _ => CcKind::Eflags,
        }
    }
    pub fn width(self) -> Width {
        1 << (self.0 & 3)
    }
}

/// All bits of a value `width` bytes wide.
pub fn mask(width: Width) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (width as u32 * 8)) - 1
    }
}

fn sign_bit(width: Width) -> u64 {
    1u64 << (width as u32 * 8 - 1)
}

fn parity(v: u64) -> u64 {
    if (v as u8).count_ones().is_multiple_of(2) {
        PF
    } else {
        0
    }
}

/// ZF, SF and PF of a result.
fn zsp(res: u64, width: Width) -> u64 {
    let res = res & mask(width);
    (if res == 0 { ZF } else { 0 }) | (if res & sign_bit(width) != 0 { SF } else { 0 }) | parity(res)
}

/// The six status flags described by a lazy record; `eflags` supplies them when the
/// record is [`CcKind::Eflags`].
pub fn compute(op: CcOp, dst: u64, src: u64, src2: u64, eflags: u64) -> u64 {
    if op.0 & CcOp::ROTATED != 0 {
        let has_of = op.0 >> CcOp::ROTATED_HAS_OF & 1 != 0;
        let base = compute(CcOp(op.0 & !CcOp::ROTATED_ALL), dst, src, src2, eflags);
        let cf = u64::from(op.0 >> CcOp::ROTATED_CF & 1) * CF;
        if !has_of {
            return base & !CF | cf;
        }
        let of = u64::from(op.0 >> CcOp::ROTATED_OF & 1) * OF;
        return base & !(CF | OF) | cf | of;
    }
    let w = op.width();
    let m = mask(w);
    let sb = sign_bit(w);
    let res = dst & m;
    let src = src & m;
    let flag = |b: bool, f: u64| if b { f } else { 0 };
    match op.kind() {
        CcKind::Eflags => eflags & (CF | PF | AF | ZF | SF | OF),
        CcKind::Flags => src & (CF | PF | AF | ZF | SF | OF),
        CcKind::Add | CcKind::Adc => {
            let c = if op.kind() == CcKind::Adc { src2 & 1 } else { 0 };
            let src1 = res.wrapping_sub(src).wrapping_sub(c) & m;
            let cf = if c != 0 { res <= src1 } else { res < src1 };
            flag(cf, CF) | ((src1 ^ src ^ res) & 0x10) | flag((src1 ^ res) & (src ^ res) & sb != 0, OF) | zsp(res, w)
        }
        CcKind::Sub | CcKind::Sbb => {
            let c = if op.kind() == CcKind::Sbb { src2 & 1 } else { 0 };
            let src1 = res.wrapping_add(src).wrapping_add(c) & m;
            let cf = if c != 0 { src1 <= src } else { src1 < src };
            flag(cf, CF) | ((src1 ^ src ^ res) & 0x10) | flag((src1 ^ src) & (src1 ^ res) & sb != 0, OF) | zsp(res, w)
        }
        CcKind::Neg => {
            // 0 - src.
            flag(src != 0, CF) | ((src ^ res) & 0x10) | flag(src & res & sb != 0, OF) | zsp(res, w)
        }
        CcKind::Logic => zsp(res, w),
        CcKind::Inc => flag(src2 & 1 != 0, CF) | flag(res & 0xf == 0, AF) | flag(res == sb, OF) | zsp(res, w),
        CcKind::Dec => flag(src2 & 1 != 0, CF) | flag(res & 0xf == 0xf, AF) | flag(res == sb - 1, OF) | zsp(res, w),
        CcKind::Shl => {
            let cf = src >> op.cf_pos() & 1 != 0;
            flag(cf, CF) | flag(cf != (res & sb != 0), OF) | zsp(res, w)
        }
        CcKind::Shr => flag(src >> op.cf_pos() & 1 != 0, CF) | flag(src2 & sb != 0, OF) | zsp(res, w),
        CcKind::Sar => flag(src >> op.cf_pos() & 1 != 0, CF) | zsp(res, w),
        CcKind::Mul => {
            let o = src != 0;
            flag(o, CF) | flag(o, OF) | zsp(res, w)
        }
    }
}

/// Evaluates condition code `cc` (the low nibble of Jcc/SETcc/CMOVcc opcodes) against
/// materialized flags.
pub fn condition(cc: u8, f: u64) -> bool {
    let (cf, zf, sf, of, pf) = (f & CF != 0, f & ZF != 0, f & SF != 0, f & OF != 0, f & PF != 0);
    let r = match cc >> 1 {
        0 => of,
        1 => cf,
        2 => zf,
        3 => cf || zf,
        4 => sf,
        5 => pf,
        6 => sf != of,
        _ => zf || sf != of,
    };
    r != (cc & 1 != 0)
}

#[cfg(test)]
// The comparisons with the host CPU run on x86-64 hosts only.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports, dead_code))]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    /// Runs `op` on the host CPU and returns its status flags.
    macro_rules! host_flags {
        ($insn:literal, $a:expr, $b:expr) => {{
            let mut a: u64 = $a;
            let flags: u64;
            // SAFETY: pure register arithmetic; pushf/pop balance the stack.
            unsafe {
                std::arch::asm!(concat!($insn, "; pushfq; pop {f}"), a = inout(reg) a, b = in(reg) $b as u64, f = out(reg) flags);
            }
            (a, flags & (CF | PF | AF | ZF | SF | OF))
        }};
    }

    const SAMPLES: [u64; 10] =
        [0, 1, 2, 0x7f, 0x80, 0xff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff_ffff_ffff, 0x8000_0000_0000_0000];

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_shift_by_a_constant_finds_cf_in_its_operand() {
        // SHL/SHR/SAR r32 by 1, 5 and 31: the record keeps the operand and CF's bit.
        macro_rules! check {
            ($insn:literal, $k:expr, $kind:expr) => {
                for &a in &SAMPLES {
                    let a = a ^ 0x1234_5678_9abc_def0;
                    let (r, f) = host_flags!($insn, a, 0u64);
                    let pos = if $kind == CcKind::Shl { 32 - $k } else { $k - 1 };
                    let src2 = if $kind == CcKind::Shr { a } else { 0 };
                    let op = CcOp::new($kind, 4).with_cf_pos(pos);
                    let mut got = compute(op, r, a, src2, 0);
                    let mut want = f;
                    if $k != 1 {
                        // OF is undefined after a shift by more than one; AF always is.
                        got &= !OF;
                        want &= !OF;
                    }
                    assert_eq!(got & !AF, want & !AF, "{} of {a:#x}", $insn);
                }
            };
        }
        check!("test {b:e}, {b:e}; shl {a:e}, 1", 1, CcKind::Shl);
        check!("test {b:e}, {b:e}; shl {a:e}, 5", 5, CcKind::Shl);
        check!("test {b:e}, {b:e}; shl {a:e}, 31", 31, CcKind::Shl);
        check!("test {b:e}, {b:e}; shr {a:e}, 1", 1, CcKind::Shr);
        check!("test {b:e}, {b:e}; shr {a:e}, 5", 5, CcKind::Shr);
        check!("test {b:e}, {b:e}; shr {a:e}, 31", 31, CcKind::Shr);
        check!("test {b:e}, {b:e}; sar {a:e}, 1", 1, CcKind::Sar);
        check!("test {b:e}, {b:e}; sar {a:e}, 5", 5, CcKind::Sar);
        check!("test {b:e}, {b:e}; sar {a:e}, 31", 31, CcKind::Sar);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn add_and_sub_match_the_host() {
        for &a in &SAMPLES {
            for &b in &SAMPLES {
                let (r, f) = host_flags!("add {a}, {b}", a, b);
                assert_eq!(compute(CcOp::new(CcKind::Add, 8), r, b, 0, 0), f, "add {a:#x},{b:#x}");
                let (r, f) = host_flags!("sub {a}, {b}", a, b);
                assert_eq!(compute(CcOp::new(CcKind::Sub, 8), r, b, 0, 0), f, "sub {a:#x},{b:#x}");
                let (r, f) = host_flags!("add {a:e}, {b:e}", a, b);
                assert_eq!(compute(CcOp::new(CcKind::Add, 4), r, b, 0, 0), f, "add32 {a:#x},{b:#x}");
                let (r, f) = host_flags!("sub {a:x}, {b:x}", a, b);
                assert_eq!(compute(CcOp::new(CcKind::Sub, 2), r, b, 0, 0), f, "sub16 {a:#x},{b:#x}");
                let (r, f) = host_flags!("stc; adc {a:l}, {b:l}", a, b);
                assert_eq!(compute(CcOp::new(CcKind::Adc, 1), r, b, 1, 0), f, "adc8 {a:#x},{b:#x}");
                let (r, f) = host_flags!("stc; sbb {a:e}, {b:e}", a, b);
                assert_eq!(compute(CcOp::new(CcKind::Sbb, 4), r, b, 1, 0), f, "sbb32 {a:#x},{b:#x}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn inc_dec_neg_match_the_host() {
        for &a in &SAMPLES {
            let (r, f) = host_flags!("mov {b}, {b}; stc; inc {a:e}", a, 0u64);
            assert_eq!(compute(CcOp::new(CcKind::Inc, 4), r, 0, 1, 0), f, "inc {a:#x}");
            let (r, f) = host_flags!("mov {b}, {b}; clc; dec {a:x}", a, 0u64);
            assert_eq!(compute(CcOp::new(CcKind::Dec, 2), r, 0, 0, 0), f, "dec {a:#x}");
            let (r, f) = host_flags!("mov {b}, {b}; neg {a}", a, 0u64);
            assert_eq!(compute(CcOp::new(CcKind::Neg, 8), r, a, 0, 0), f, "neg {a:#x}");
        }
    }

    #[test]
    fn conditions() {
        assert!(condition(0x4, ZF)); // E
        assert!(!condition(0x5, ZF)); // NE
        assert!(condition(0xc, SF)); // L: SF != OF
        assert!(!condition(0xc, SF | OF));
        assert!(condition(0x6, CF)); // BE
        assert!(condition(0xf, 0)); // G
    }

    #[test]
    fn packing_round_trips() {
        for k in [CcKind::Add, CcKind::Neg, CcKind::Mul, CcKind::Shr] {
            for w in [1, 2, 4, 8] {
                let op = CcOp::new(k, w);
                assert_eq!((op.kind(), op.width()), (k, w));
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_rotated_record_takes_cf_and_of_from_the_rotate() {
        // add eax, ebx; rol eax, 1 (as a record: the add's, with the rotate's CF/OF).
        for &a in &SAMPLES {
            for &b in &SAMPLES {
                let (sum, _) = host_flags!("add {a:e}, {b:e}", a, b);
                let (rotated, want) = host_flags!("add {a:e}, {b:e}; rol {a:e}, 1", a, b);
                let cf = rotated & 1;
                let of = (rotated >> 31 & 1) ^ cf;
                let op = CcOp(
                    CcOp::new(CcKind::Add, 4).0
                        | CcOp::ROTATED
                        | (cf as u32) << CcOp::ROTATED_CF
                        | (of as u32) << CcOp::ROTATED_OF
                        | 1 << CcOp::ROTATED_HAS_OF,
                );
                assert_eq!(op.kind(), CcKind::Add);
                let got = compute(op, sum, b, 0, 0);
                // AF after a rotate is undefined; the rest must match.
                assert_eq!(got & !AF, want & !AF, "add {a:#x},{b:#x}; rol 1");
            }
        }
    }
}
