//! The x87 FPU: control (FNINIT, FNSTSW, FNSTCW, FLDCW, FNCLEX, FNSTENV/FLDENV,
//! FNSAVE/FRSTOR, FXSAVE/FXRSTOR(64), EMMS, FFREE, FINCSTP/FDECSTP), data movement
//! (FLD/FST/FSTP, FILD/FIST/FISTP/FISTTP, constants, FXCH, FCMOVcc), arithmetic
//! (FADD..FDIVR with their P and I forms, FCHS, FABS, FSQRT, FRNDINT, FSCALE, FXTRACT,
//! FPREM/FPREM1, the transcendentals) and comparisons (FCOM*, FUCOM*, FICOM*, FCOMI*,
//! FTST, FXAM).
//!
//! The registers are kept by physical register, as the hardware keeps them: in the
//! CPU state `fpu.st[p]` is R`p` (and MM`p`), ST(i) is R((TOP + i) & 7), `ftw` is the
//! abridged tag word. Pushes and pops move TOP only, so generated code can do them
//! too; FXSAVE, FNSAVE and [`crate::exec`]'s register access convert to the
//! architectural ST(i) order.
//!
//! Precision: loads and stores (m32, m64, m80, integers), FXCH, FCHS, FABS, FRNDINT,
//! FSCALE (in range), FXTRACT and all comparisons are exact on the 80-bit values; stores
//! to m32/m64 round once with FCW.RC. FADD..FDIVR and FSQRT are exact software
//! arithmetic on the 80-bit values ([`super::f80`]): FCW's rounding and precision
//! control, the exception flags and C1 (round-up) as the hardware sets them. FPREM and
//! the transcendentals convert their operands to f64 (round to nearest), compute in
//! f64 and widen the result exactly (double precision and range; PE and C1 not
//! raised). Exceptions set their sticky FSW flags (and ES when unmasked) but #MF
//! is never delivered.

use iced_x86::{Instruction, MemorySize, Mnemonic, OpKind, Register};

use super::{f80, write_reg, Operands, Step};
use crate::cpu::{vector, Cpu, Exception, Result};

pub(crate) const CR0_EM: u64 = 1 << 2;
pub(crate) const CR0_TS: u64 = 1 << 3;

/// The MXCSR bits this CPU implements (DAZ included), as FXSAVE reports them.
pub(crate) const MXCSR_MASK: u32 = 0xffff;

// FSW bits.
const IE: u16 = 1 << 0;
const DE: u16 = 1 << 1;
const ZE: u16 = 1 << 2;
const PE: u16 = 1 << 5;
const SF: u16 = 1 << 6;
const ES: u16 = 1 << 7;
const C0: u16 = 1 << 8;
const C1: u16 = 1 << 9;
const C2: u16 = 1 << 10;
const C3: u16 = 1 << 14;
const B: u16 = 1 << 15;
const CC: u16 = C0 | C1 | C2 | C3;

/// Rounding modes (FCW.RC and MXCSR.RC encoding).
pub(crate) const RC_NEAR: u32 = 0;
pub(crate) const RC_DOWN: u32 = 1;
pub(crate) const RC_UP: u32 = 2;
pub(crate) const RC_ZERO: u32 = 3;

/// Flags from [`round_bin`] (in the IE..PE bit order both FSW and MXCSR use).
pub(crate) const F_IE: u32 = 1;
pub(crate) const F_DE: u32 = 2;
pub(crate) const F_ZE: u32 = 4;
pub(crate) const F_OE: u32 = 8;
pub(crate) const F_UE: u32 = 16;
pub(crate) const F_PE: u32 = 32;

/// Rounds `sign × m × 2^(e−63)` (`m` normalized: bit 63 set, or 0 for zero) to a
/// binary format with `p` significand bits (hidden bit included) and `ebits` exponent
/// bits, with rounding mode `rc`. Returns the encoding (sign at bit `p−1+ebits`) and
/// the OE/UE/PE flags. Exact: one rounding, denormals and overflow included.
pub(crate) fn round_bin(sign: bool, m: u64, e: i32, p: u32, ebits: u32, rc: u32) -> (u64, u32) {
    let sbit = u64::from(sign) << (p - 1 + ebits);
    if m == 0 {
        return (sbit, 0);
    }
    let bias = (1i32 << (ebits - 1)) - 1;
    let emin = 1 - bias;
    let mut d = 64 - p as i32; // bits dropped
    let tiny = e < emin;
    // x86 detects tininess after rounding (with an unbounded exponent): a value just
    // below the smallest normal that rounds up to it is not tiny.
    let tiny_after = tiny && {
        let d0 = 64 - p;
        let (q0, rem0, half0) = (m >> d0, m & ((1 << d0) - 1), 1u64 << (d0 - 1));
        let up0 = match rc {
            RC_NEAR => rem0 > half0 || (rem0 == half0 && q0 & 1 == 1),
            RC_DOWN => sign && rem0 != 0,
            RC_UP => !sign && rem0 != 0,
            _ => false,
        };
        !(e == emin - 1 && q0 + u64::from(up0) == 1 << p)
    };
    if tiny {
        d += emin - e;
    } else if e + bias >= (1 << ebits) - 1 {
        // Far beyond the format (an 80-bit value narrowed): overflow, whatever the
        // rounding (the exponent field must not be computed, it would not fit).
        return overflowed(sign, p, ebits, rc);
    }
    let (q, rem, half) = if d >= 65 {
        (0u64, 1u128, 2u128) // everything below half of the last place: sticky only
    } else {
        let d = d as u32;
        let q = if d >= 64 { 0 } else { m >> d };
        let rem = u128::from(m) & ((1u128 << d) - 1);
        (q, rem, 1u128 << (d - 1))
    };
    let mut flags = 0;
    let inexact = rem != 0;
    let up = match rc {
        RC_NEAR => rem > half || (rem == half && q & 1 == 1),
        RC_DOWN => sign && inexact,
        RC_UP => !sign && inexact,
        _ => false,
    };
    let q = q + u64::from(up);
    if inexact {
        flags |= F_PE;
        if tiny_after {
            flags |= F_UE;
        }
    }
    let field = if tiny { 0 } else { ((e + bias - 1) as u64) << (p - 1) };
    let bits = field + q;
    if bits >> (p - 1) >= (1u64 << ebits) - 1 {
        return overflowed(sign, p, ebits, rc);
    }
    (sbit | bits, flags)
}

/// An overflow's result in a binary format: infinity or the largest finite value, by
/// rounding mode and sign, with OE and PE.
fn overflowed(sign: bool, p: u32, ebits: u32, rc: u32) -> (u64, u32) {
    let sbit = u64::from(sign) << (p - 1 + ebits);
    let inf = ((1u64 << ebits) - 1) << (p - 1);
    let to_inf = match rc {
        RC_NEAR => true,
        RC_DOWN => sign,
        RC_UP => !sign,
        _ => false,
    };
    (sbit | if to_inf { inf } else { inf - 1 }, F_OE | F_PE)
}

/// The basic IEEE operations shared by the x87 and SSE code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FOp {
    Add,
    Sub,
    Mul,
    Div,
    /// sqrt(b); `a` is ignored.
    Sqrt,
}

/// `a op b` in f64 rounded with `rc`, for non-NaN operands. Returns the result, the
/// sign of (exact − round-to-nearest result) (0 when exact) and whether it overflowed.
/// Overflow gives infinity or the largest finite value by mode; an exactly zero sum
/// is −0 when rounding down.
pub(crate) fn op_f64(op: FOp, a: f64, b: f64, rc: u32) -> (f64, i8, bool) {
    let r = match op {
        FOp::Add => a + b,
        FOp::Sub => a - b,
        FOp::Mul => a * b,
        FOp::Div => a / b,
        FOp::Sqrt => b.sqrt(),
    };
    let finite_in = a.is_finite() && b.is_finite();
    if r.is_infinite() && finite_in && !(op == FOp::Div && b == 0.0) {
        let to_inf = match rc {
            RC_NEAR => true,
            RC_DOWN => r < 0.0,
            RC_UP => r > 0.0,
            _ => false,
        };
        let v = if to_inf { r } else { f64::MAX.copysign(r) };
        return (v, if r > 0.0 { 1 } else { -1 }, true);
    }
    if !r.is_finite() || !finite_in {
        return (r, 0, false);
    }
    // Error-free transformations: the rounding error's sign.
    let e = match op {
        FOp::Add | FOp::Sub => {
            let b = if op == FOp::Sub { -b } else { b };
            let bb = r - a;
            (a - (r - bb)) + (b - bb)
        }
        FOp::Mul | FOp::Div if a != 0.0 && b != 0.0 && a.abs().min(b.abs()).min(r.abs()) < 1e-280 => {
            // The FMA residual may underflow: compare at a normal scale instead.
            let split = |x: f64| {
                let (m, k) = if x.abs() < f64::MIN_POSITIVE { (x * 2f64.powi(64), -64) } else { (x, 0) };
                let e = ((m.to_bits() >> 52) & 0x7ff) as i32 - 1023;
                (f64::from_bits((m.to_bits() & !(0x7ff << 52)) | (1023 << 52)), e + k)
            };
            let ((xa, ea), (xb, eb)) = (split(a), split(b));
            if op == FOp::Mul {
                let p = xa * xb;
                (p - ldexp(r, -(ea + eb))) + xa.mul_add(xb, -p)
            } else {
                let q = xa / xb;
                let rs = ldexp(r, eb - ea);
                if q != rs {
                    q - rs
                } else {
                    (-q).mul_add(xb, xa) * xb.signum()
                }
            }
        }
        FOp::Mul => a.mul_add(b, -r),
        FOp::Div => {
            let rem = (-r).mul_add(b, a);
            if b < 0.0 {
                -rem
            } else {
                rem
            }
        }
        // b − r² underflows for a tiny b (a denormal's root is normal, its square
        // is not): scaled by 2^128 (the root by 2^64), both exactly.
        FOp::Sqrt if b < 1e-280 => {
            let (bs, rs) = (b * 2f64.powi(128), r * 2f64.powi(64));
            (-rs).mul_add(rs, bs)
        }
        FOp::Sqrt => (-r).mul_add(r, b),
    };
    let dir: i8 = if e > 0.0 {
        1
    } else if e < 0.0 {
        -1
    } else {
        0
    };
    let v = match rc {
        RC_DOWN if dir < 0 => r.next_down(),
        RC_UP if dir > 0 => r.next_up(),
        RC_ZERO if (dir < 0 && r > 0.0) || (dir > 0 && r < 0.0) => {
            if r > 0.0 {
                r.next_down()
            } else {
                r.next_up()
            }
        }
        RC_DOWN if r == 0.0 && dir == 0 && matches!(op, FOp::Add | FOp::Sub) => {
            let b = if op == FOp::Sub { -b } else { b };
            if a.to_bits() == 0 && b.to_bits() == 0 {
                0.0
            } else {
                -0.0
            }
        }
        _ => r,
    };
    (v, dir, v.is_infinite())
}

/// An 80-bit extended-precision value: sign and exponent, and the 64-bit significand
/// with its explicit integer bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct F80 {
    pub se: u16,
    pub m: u64,
}

impl F80 {
    pub const ZERO: F80 = F80 { se: 0, m: 0 };
    pub const ONE: F80 = F80 { se: 0x3fff, m: 1 << 63 };
    /// The QNaN floating-point indefinite.
    pub const INDEFINITE: F80 = F80 { se: 0xffff, m: 0xc000_0000_0000_0000 };

    pub fn from_bytes(b: &[u8]) -> F80 {
        F80 { m: u64::from_le_bytes(b[..8].try_into().unwrap()), se: u16::from_le_bytes([b[8], b[9]]) }
    }
    pub fn to_bytes(self) -> [u8; 10] {
        let mut b = [0; 10];
        b[..8].copy_from_slice(&self.m.to_le_bytes());
        b[8..].copy_from_slice(&self.se.to_le_bytes());
        b
    }
    pub fn sign(self) -> bool {
        self.se & 0x8000 != 0
    }
    pub fn exp(self) -> u16 {
        self.se & 0x7fff
    }
    pub fn is_nan(self) -> bool {
        self.exp() == 0x7fff && self.m << 1 != 0
    }
    pub fn is_snan(self) -> bool {
        self.is_nan() && self.m & (1 << 62) == 0
    }
    pub fn is_inf(self) -> bool {
        self.exp() == 0x7fff && self.m << 1 == 0
    }
    pub fn is_zero(self) -> bool {
        self.exp() == 0 && self.m == 0
    }
    pub fn is_denormal(self) -> bool {
        self.exp() == 0 && self.m != 0
    }
    /// An encoding the 387 and later reject as an operand (IE): unnormals,
    /// pseudo-infinities and pseudo-NaNs (integer bit clear, exponent not zero).
    pub fn is_unsupported(self) -> bool {
        self.exp() != 0 && self.m >> 63 == 0
    }
    pub fn quiet(self) -> F80 {
        F80 { se: self.se, m: self.m | 0xc000_0000_0000_0000 }
    }
    pub fn negate(self) -> F80 {
        F80 { se: self.se ^ 0x8000, m: self.m }
    }
    pub fn abs(self) -> F80 {
        F80 { se: self.se & 0x7fff, m: self.m }
    }

    /// Finite nonzero value as (sign, normalized significand, exponent of bit 63).
    fn parts(self) -> (bool, u64, i32) {
        let e = if self.exp() == 0 { 1 - 16383 } else { i32::from(self.exp()) - 16383 };
        let lz = self.m.leading_zeros();
        (self.sign(), self.m << lz, e - lz as i32)
    }

    /// Rounds to a binary interchange format (see [`round_bin`]); NaNs are quieted
    /// with their payload's top bits kept (IE for an SNaN).
    pub fn to_bin(self, p: u32, ebits: u32, rc: u32) -> (u64, u32) {
        let sbit = u64::from(self.sign()) << (p - 1 + ebits);
        let inf = ((1u64 << ebits) - 1) << (p - 1);
        if self.exp() == 0x7fff {
            if self.is_inf() {
                return (sbit | inf, 0);
            }
            let payload = (self.m << 1) >> (64 - (p - 1));
            let flags = if self.is_snan() { F_IE } else { 0 };
            return (sbit | inf | payload | 1 << (p - 2), flags);
        }
        if self.m == 0 {
            return (sbit, 0);
        }
        let (s, m, e) = self.parts();
        round_bin(s, m, e, p, ebits, rc)
    }

    pub fn to_f64(self) -> f64 {
        f64::from_bits(self.to_bin(53, 11, RC_NEAR).0)
    }

    /// Exact widening of a binary format value (`p` significand bits, `ebits`).
    pub fn from_bin(bits: u64, p: u32, ebits: u32) -> F80 {
        let frac = bits & ((1u64 << (p - 1)) - 1);
        let bexp = (bits >> (p - 1)) & ((1 << ebits) - 1);
        let sign = ((bits >> (p - 1 + ebits)) & 1) as u16;
        let bias = (1i32 << (ebits - 1)) - 1;
        let s = sign << 15;
        if bexp == (1 << ebits) - 1 {
            return F80 { se: s | 0x7fff, m: 1 << 63 | frac << (64 - p) };
        }
        if bexp == 0 {
            if frac == 0 {
                return F80 { se: s, m: 0 };
            }
            let lz = frac.leading_zeros();
            // value = frac × 2^(1 − bias − (p − 1)); bit 63 after the shift.
            let e = 1 - bias - (p as i32 - 1) + (63 - lz as i32);
            return F80 { se: s | (e + 16383) as u16, m: frac << lz };
        }
        let e = bexp as i32 - bias;
        F80 { se: s | (e + 16383) as u16, m: 1 << 63 | frac << (64 - p) }
    }

    pub fn from_f64(v: f64) -> F80 {
        F80::from_bin(v.to_bits(), 53, 11)
    }
    pub fn from_f32(v: f32) -> F80 {
        F80::from_bin(u64::from(v.to_bits()), 24, 8)
    }

    pub fn from_int(v: i64) -> F80 {
        if v == 0 {
            return F80::ZERO;
        }
        let s = if v < 0 { 0x8000 } else { 0 };
        let a = v.unsigned_abs();
        let lz = a.leading_zeros();
        F80 { se: s | (16383 + 63 - lz) as u16, m: a << lz }
    }

    /// Rounds to an integer value with mode `rc`: the magnitude, and whether that was
    /// inexact. `None` for NaN, infinity or a magnitude of 2^64 or more.
    pub fn round_int(self, rc: u32) -> Option<(bool, u64, bool)> {
        if self.exp() == 0x7fff {
            return None;
        }
        if self.m == 0 {
            return Some((self.sign(), 0, false));
        }
        let (sign, m, e) = self.parts();
        if e >= 64 {
            return None;
        }
        if e >= 63 {
            return Some((sign, m, false));
        }
        let fb = (63 - e) as u32; // fraction bits, >= 1
        let (q, rem, half) = if fb > 64 {
            (0u64, 1u128, 1u128 << 64)
        } else {
            let rem = u128::from(m) & ((1u128 << fb) - 1);
            (if fb == 64 { 0 } else { m >> fb }, rem, 1u128 << (fb - 1))
        };
        let inexact = rem != 0;
        let up = match rc {
            RC_NEAR => rem > half || (rem == half && q & 1 == 1),
            RC_DOWN => sign && inexact,
            RC_UP => !sign && inexact,
            _ => false,
        };
        Some((sign, q + u64::from(up), inexact))
    }

    /// An integer magnitude and sign as an 80-bit value (exact).
    fn from_mag(sign: bool, mag: u64) -> F80 {
        if mag == 0 {
            return F80 { se: u16::from(sign) << 15, m: 0 };
        }
        let lz = mag.leading_zeros();
        F80 { se: u16::from(sign) << 15 | (16383 + 63 - lz) as u16, m: mag << lz }
    }

    /// Exact comparison; `None` when unordered.
    pub fn compare(self, o: F80) -> Option<std::cmp::Ordering> {
        use std::cmp::Ordering::*;
        if self.is_nan() || o.is_nan() {
            return None;
        }
        if self.is_zero() && o.is_zero() {
            return Some(Equal);
        }
        let key = |x: F80| {
            let (e, m) = if x.exp() == 0 { (1u128, x.m) } else { (u128::from(x.exp()), x.m) };
            // Denormals (integer bit clear) order below the smallest normal.
            let mag = (e << 64 | u128::from(m)) as i128;
            let mag = if x.m == 0 { 0 } else { mag };
            if x.sign() {
                -mag
            } else {
                mag
            }
        };
        Some(key(self).cmp(&key(o)))
    }
}

const fn k(se: u16, m: u64) -> F80 {
    F80 { se, m }
}

/// x87 instructions: `Some(true)` for the control ones (no pending-exception check),
/// `Some(false)` for the others, `None` for anything else.
fn class(m: Mnemonic) -> Option<bool> {
    use Mnemonic::*;
    Some(match m {
        Fninit | Finit | Fnclex | Fclex | Fnstsw | Fstsw | Fnstcw | Fstcw | Fldcw | Fxsave | Fxsave64 | Fxrstor
        | Fxrstor64 | Fnsave | Fsave | Frstor | Fnstenv | Fstenv | Fldenv | Fneni | Fndisi | Fnsetpm | Feni | Fdisi
        | Fsetpm => true,
        Fld | Fst | Fstp | Fild | Fist | Fistp | Fisttp | Fld1 | Fldz | Fldpi | Fldl2e | Fldl2t | Fldlg2 | Fldln2
        | Fxch | Fadd | Faddp | Fiadd | Fsub | Fsubp | Fisub | Fsubr | Fsubrp | Fisubr | Fmul | Fmulp | Fimul
        | Fdiv | Fdivp | Fidiv | Fdivr | Fdivrp | Fidivr | Fchs | Fabs | Fsqrt | Frndint | Fscale | Fxtract | Fprem
        | Fprem1 | Fsin | Fcos | Fsincos | Fptan | Fpatan | Fyl2x | Fyl2xp1 | F2xm1 | Fcom | Fcomp | Fcompp | Fucom
        | Fucomp | Fucompp | Ficom | Ficomp | Fcomi | Fcomip | Fucomi | Fucomip | Ftst | Fxam | Fnop | Ffree
        | Ffreep | Fincstp | Fdecstp | Fcmovb | Fcmove | Fcmovbe | Fcmovu | Fcmovnb | Fcmovne | Fcmovnbe | Fcmovnu => {
            false
        }
        _ => return None,
    })
}

/// Whether `ins` is an x87 instruction or EMMS (`exec` returns `Some` or an error for
/// it).
pub fn handles(ins: &Instruction) -> bool {
    ins.mnemonic() == Mnemonic::Emms || class(ins.mnemonic()).is_some()
}

/// Runs `ins` if it is an x87 instruction (or EMMS).
pub fn exec(cpu: &mut Cpu, ins: &Instruction) -> Result<Option<Step>> {
    use Mnemonic::*;
    let m = ins.mnemonic();
    if m == Emms {
        if cpu.state.cr0 & CR0_EM != 0 {
            return Err(Exception::ud());
        }
        if cpu.state.cr0 & CR0_TS != 0 {
            return Err(Exception::new(vector::NM));
        }
        cpu.state.fpu.ftw = 0;
        return Ok(Some(Step::Next));
    }
    let Some(control) = class(m) else { return Ok(None) };
    if cpu.state.cr0 & (CR0_EM | CR0_TS) != 0 {
        return Err(Exception::new(vector::NM));
    }
    if control {
        control_op(cpu, ins)?;
    } else {
        let mem = (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory);
        let dp = if mem { Operands { cpu, ins }.offset() } else { 0 };
        data_op(cpu, ins)?;
        let f = &mut cpu.state.fpu;
        f.fip = ins.ip();
        if mem {
            f.fdp = dp;
        }
    }
    Ok(Some(Step::Next))
}

// ---- Stack access ----

fn top(cpu: &Cpu) -> usize {
    cpu.state.fpu.top()
}

fn set_top(cpu: &mut Cpu, t: usize) {
    let f = &mut cpu.state.fpu;
    f.fsw = (f.fsw & !(7 << 11)) | ((t as u16 & 7) << 11);
}

fn phys(cpu: &Cpu, i: usize) -> usize {
    (top(cpu) + i) & 7
}

fn is_empty(cpu: &Cpu, i: usize) -> bool {
    cpu.state.fpu.ftw & (1 << phys(cpu, i)) == 0
}

fn raw(cpu: &Cpu, i: usize) -> F80 {
    F80::from_bytes(&cpu.state.fpu.st[phys(cpu, i)])
}

/// Sets the FSW exception flags in `flags` (FSW bit order) and ES/B when one is
/// unmasked.
fn raise(cpu: &mut Cpu, flags: u16) {
    let f = &mut cpu.state.fpu;
    f.fsw |= flags;
    if flags & !f.fcw & 0x3f != 0 {
        log::debug!("tcg x87: unmasked exception {flags:#x} (fcw {:#x}); #MF not delivered", f.fcw);
        f.fsw |= ES | B;
    }
}

/// ST(i), or the indefinite after a stack underflow.
fn st(cpu: &mut Cpu, i: usize) -> F80 {
    if is_empty(cpu, i) {
        cpu.state.fpu.fsw &= !C1;
        raise(cpu, IE | SF);
        return F80::INDEFINITE;
    }
    raw(cpu, i)
}

/// The masked response to a stack underflow: IE and SF, C1 clear, and (`dst`) the
/// indefinite in the destination instead of the operation's result.
fn underflow(cpu: &mut Cpu, dst: Option<usize>) {
    cpu.state.fpu.fsw &= !C1;
    raise(cpu, IE | SF);
    if let Some(d) = dst {
        set_st(cpu, d, F80::INDEFINITE);
    }
}

/// A push would find its register full (stack overflow).
fn push_overflows(cpu: &Cpu) -> bool {
    cpu.state.fpu.ftw & (1 << ((top(cpu) + 7) & 7)) != 0
}

fn set_st(cpu: &mut Cpu, i: usize, v: F80) {
    let p = phys(cpu, i);
    let f = &mut cpu.state.fpu;
    f.st[p] = [0; 16];
    f.st[p][..10].copy_from_slice(&v.to_bytes());
    f.ftw |= 1 << p;
}

fn push(cpu: &mut Cpu, v: F80) {
    if push_overflows(cpu) {
        cpu.state.fpu.fsw |= C1;
        raise(cpu, IE | SF);
        push_raw(cpu, F80::INDEFINITE);
    } else {
        push_raw(cpu, v);
    }
}

/// Pushes `v` whether or not the register is full: a fault's masked response that
/// the caller has reported.
fn push_raw(cpu: &mut Cpu, v: F80) {
    set_top(cpu, (top(cpu) + 7) & 7);
    set_st(cpu, 0, v);
}

fn pop(cpu: &mut Cpu) {
    let p = phys(cpu, 0);
    cpu.state.fpu.ftw &= !(1 << p);
    set_top(cpu, (top(cpu) + 1) & 7);
}

fn sti(r: Register) -> usize {
    (r as usize) - (Register::ST0 as usize)
}

fn rc(cpu: &Cpu) -> u32 {
    u32::from(cpu.state.fpu.fcw >> 10) & 3
}

/// Reads a memory operand as an 80-bit value (float or integer formats), raising DE
/// for a denormal m32/m64 (FLD).
/// and IE (quieting it) for a signalling NaN.
fn load_mem(cpu: &mut Cpu, ins: &Instruction) -> Result<F80> {
    let (v, denormal) = load_mem_quiet(cpu, ins)?;
    if denormal {
        raise(cpu, DE);
    }
    if v.is_snan() && ins.memory_size() != MemorySize::Float80 {
        raise(cpu, IE);
        return Ok(v.quiet());
    }
    Ok(v)
}

/// As [`load_mem`], but telling rather than raising a denormal m32/m64 source (an
/// operation that meets a NaN or an invalid operand does not report it), and leaving
/// a signalling NaN as it is for the operation's own NaN rules.
fn load_mem_quiet(cpu: &mut Cpu, ins: &Instruction) -> Result<(F80, bool)> {
    let o = Operands { cpu, ins };
    let a = o.linear();
    let v = match ins.memory_size() {
        MemorySize::Float32 => {
            let bits = cpu.read_u32(a)?;
            let v = F80::from_bin(u64::from(bits), 24, 8);
            return Ok((v, bits & 0x7f80_0000 == 0 && bits << 1 != 0));
        }
        MemorySize::Float64 => {
            let bits = cpu.read_u64(a)?;
            let v = F80::from_bin(bits, 53, 11);
            return Ok((v, bits & 0x7ff0_0000_0000_0000 == 0 && bits << 1 != 0));
        }
        MemorySize::Float80 => {
            let mut b = [0; 10];
            cpu.read(a, &mut b)?;
            F80::from_bytes(&b)
        }
        MemorySize::Int16 => F80::from_int(i64::from(cpu.read_u16(a)? as i16)),
        MemorySize::Int32 => F80::from_int(i64::from(cpu.read_u32(a)? as i32)),
        MemorySize::Int64 => F80::from_int(cpu.read_u64(a)? as i64),
        s => {
            log::debug!("tcg x87: unexpected memory size {s:?}");
            return Err(Exception::ud());
        }
    };
    Ok((v, false))
}

/// The source value of a one-memory-operand or (ST0, ST(i)) instruction's operand `i`.
fn operand(cpu: &mut Cpu, ins: &Instruction, i: u32) -> Result<F80> {
    match ins.op_kind(i) {
        OpKind::Memory => {
            let (v, denormal) = load_mem_quiet(cpu, ins)?;
            let a = raw(cpu, 0);
            // Reported only when the operation goes on (see `load_mem_quiet`).
            if denormal && !is_empty(cpu, 0) && !a.is_nan() && !a.is_unsupported() {
                raise(cpu, DE);
            }
            Ok(v)
        }
        _ => Ok(st(cpu, sti(ins.op_register(i)))),
    }
}

// ---- Control ----

fn fninit(cpu: &mut Cpu) {
    let f = &mut cpu.state.fpu;
    f.fcw = 0x37f;
    f.fsw = 0;
    f.ftw = 0;
    f.fop = 0;
    f.fip = 0;
    f.fdp = 0;
}

/// The two-bit tag of physical register `p` (00 valid, 01 zero, 10 special, 11 empty).
fn full_tag(cpu: &Cpu, p: usize) -> u16 {
    if cpu.state.fpu.ftw & (1 << p) == 0 {
        return 3;
    }
    let v = raw(cpu, (p + 8 - top(cpu)) & 7);
    if v.is_zero() {
        1
    } else if v.exp() == 0x7fff || v.exp() == 0 || v.m >> 63 == 0 {
        2
    } else {
        0
    }
}

fn full_tag_word(cpu: &Cpu) -> u16 {
    (0..8).map(|p| full_tag(cpu, p) << (2 * p)).fold(0, |a, b| a | b)
}

/// The FNSTENV image: 28 bytes (32-bit operand size) or 14 (16-bit), protected-mode
/// layout in every mode.
fn env_image(cpu: &Cpu, long: bool) -> Vec<u8> {
    let f = &cpu.state.fpu;
    let tw = full_tag_word(cpu);
    let mut b = Vec::with_capacity(28);
    if long {
        // The reserved upper halves read as ones, as on hardware.
        for v in [
            0xffff_0000 | u32::from(f.fcw),
            0xffff_0000 | u32::from(f.fsw),
            0xffff_0000 | u32::from(tw),
            f.fip as u32,
            u32::from(f.fop & 0x7ff) << 16,
            f.fdp as u32,
            0,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    } else {
        for v in [f.fcw, f.fsw, tw, f.fip as u16, 0, f.fdp as u16, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b
}

fn load_env(cpu: &mut Cpu, b: &[u8], long: bool) {
    let w = |i: usize| {
        if long {
            u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap())
        } else {
            u32::from(u16::from_le_bytes([b[i * 2], b[i * 2 + 1]]))
        }
    };
    let f = &mut cpu.state.fpu;
    f.fcw = w(0) as u16;
    f.fsw = w(1) as u16;
    let tw = w(2);
    f.ftw = (0..8).filter(|p| (tw >> (2 * p)) & 3 != 3).fold(0, |a, p| a | 1 << p);
    f.fip = u64::from(w(3));
    f.fop = if long { (w(4) >> 16) as u16 & 0x7ff } else { 0 };
    f.fdp = u64::from(w(5));
}

fn control_op(cpu: &mut Cpu, ins: &Instruction) -> Result<()> {
    use Mnemonic::*;
    match ins.mnemonic() {
        Fninit | Finit => fninit(cpu),
        Fnclex | Fclex => cpu.state.fpu.fsw &= !(0xff | B),
        Fnstsw | Fstsw => {
            let v = u64::from(cpu.state.fpu.fsw);
            if ins.op0_kind() == OpKind::Register {
                write_reg(cpu, Register::AX, v);
            } else {
                Operands { cpu, ins }.write(0, v)?;
            }
        }
        Fnstcw | Fstcw => {
            let v = u64::from(cpu.state.fpu.fcw);
            Operands { cpu, ins }.write(0, v)?;
        }
        Fldcw => {
            let v = Operands { cpu, ins }.read(0)? as u16;
            let f = &mut cpu.state.fpu;
            f.fcw = v;
            if f.fsw & 0x3f & !v != 0 {
                f.fsw |= ES | B;
            } else {
                f.fsw &= !(ES | B);
            }
        }
        Fxsave | Fxsave64 => fxsave(cpu, ins, ins.mnemonic() == Fxsave64)?,
        Fxrstor | Fxrstor64 => fxrstor(cpu, ins, ins.mnemonic() == Fxrstor64)?,
        Fnstenv | Fstenv | Fnsave | Fsave => {
            let save = matches!(ins.mnemonic(), Fnsave | Fsave);
            let long = !matches!(ins.memory_size(), MemorySize::FpuEnv14 | MemorySize::FpuState94);
            let mut b = env_image(cpu, long);
            if save {
                for i in 0..8 {
                    b.extend_from_slice(&cpu.state.fpu.st[phys(cpu, i)][..10]);
                }
            }
            let a = Operands { cpu, ins }.linear();
            cpu.write(a, &b)?;
            if save {
                fninit(cpu);
            } else {
                cpu.state.fpu.fcw |= 0x3f;
            }
        }
        Fldenv | Frstor => {
            let rstor = ins.mnemonic() == Frstor;
            let long = !matches!(ins.memory_size(), MemorySize::FpuEnv14 | MemorySize::FpuState94);
            let n = if long { 28 } else { 14 };
            let mut b = vec![0; n + if rstor { 80 } else { 0 }];
            let a = Operands { cpu, ins }.linear();
            cpu.read(a, &mut b)?;
            load_env(cpu, &b, long);
            if rstor {
                for i in 0..8 {
                    let p = phys(cpu, i);
                    let st = &mut cpu.state.fpu.st[p];
                    *st = [0; 16];
                    st[..10].copy_from_slice(&b[n + i * 10..n + i * 10 + 10]);
                }
            }
        }
        // 8087/287 leftovers: no-ops since the 387.
        _ => {}
    }
    Ok(())
}

fn fxsave(cpu: &mut Cpu, ins: &Instruction, rexw: bool) -> Result<()> {
    let a = Operands { cpu, ins }.linear();
    if a & 15 != 0 {
        return Err(Exception::gp0());
    }
    let nx = if cpu.state.code_bits() == 64 { 16 } else { 8 };
    let f = &cpu.state.fpu;
    let top = top(cpu);
    let mut b = [0u8; 512];
    b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    b[4] = f.ftw;
    b[6..8].copy_from_slice(&f.fop.to_le_bytes());
    if rexw {
        b[8..16].copy_from_slice(&f.fip.to_le_bytes());
        b[16..24].copy_from_slice(&f.fdp.to_le_bytes());
    } else {
        b[8..12].copy_from_slice(&(f.fip as u32).to_le_bytes());
        b[16..20].copy_from_slice(&(f.fdp as u32).to_le_bytes());
    }
    b[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for i in 0..8 {
        b[32 + 16 * i..32 + 16 * i + 10].copy_from_slice(&f.st[(top + i) & 7][..10]);
    }
    for i in 0..nx {
        b[160 + 16 * i..176 + 16 * i].copy_from_slice(&f.xmm[i]);
    }
    cpu.write(a, &b[..160 + 16 * nx])
}

fn fxrstor(cpu: &mut Cpu, ins: &Instruction, rexw: bool) -> Result<()> {
    let a = Operands { cpu, ins }.linear();
    if a & 15 != 0 {
        return Err(Exception::gp0());
    }
    let nx = if cpu.state.code_bits() == 64 { 16 } else { 8 };
    let mut b = [0u8; 512];
    cpu.read(a, &mut b[..160 + 16 * nx])?;
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let mxcsr = u32_at(24);
    if mxcsr & !MXCSR_MASK != 0 {
        return Err(Exception::gp0());
    }
    let f = &mut cpu.state.fpu;
    f.fcw = u16_at(0);
    f.fsw = u16_at(2);
    f.ftw = b[4];
    f.fop = u16_at(6) & 0x7ff;
    if rexw {
        f.fip = u64_at(8);
        f.fdp = u64_at(16);
    } else {
        f.fip = u64::from(u32_at(8));
        f.fdp = u64::from(u32_at(16));
    }
    f.mxcsr = mxcsr;
    let top = f.top();
    for i in 0..8 {
        let p = (top + i) & 7;
        f.st[p] = [0; 16];
        f.st[p][..10].copy_from_slice(&b[32 + 16 * i..42 + 16 * i]);
    }
    for i in 0..nx {
        f.xmm[i].copy_from_slice(&b[160 + 16 * i..176 + 16 * i]);
    }
    Ok(())
}

// ---- Data and arithmetic ----

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// FADD..FDIVR and their P and I forms: the operation, whether its operands are
/// reversed (`src op dst`, the R forms) and whether it pops. None for the others.
pub(crate) fn arith_form(m: Mnemonic) -> Option<(Arith, bool, bool)> {
    use Mnemonic::*;
    let (op, rev) = match m {
        Fadd | Faddp | Fiadd => (Arith::Add, false),
        Fsub | Fsubp | Fisub => (Arith::Sub, false),
        Fsubr | Fsubrp | Fisubr => (Arith::Sub, true),
        Fmul | Fmulp | Fimul => (Arith::Mul, false),
        Fdiv | Fdivp | Fidiv => (Arith::Div, false),
        Fdivr | Fdivrp | Fidivr => (Arith::Div, true),
        _ => return None,
    };
    Some((op, rev, matches!(m, Faddp | Fsubp | Fsubrp | Fmulp | Fdivp | Fdivrp)))
}

/// `a op b` with x87 NaN and exception rules, rounded as FCW says (see [`super::f80`]);
/// sets C1 to the round-up indication.
/// `denormal_source`: an operand was a denormal m32/m64 (normal once widened), which
/// counts as a denormal operand.
fn arith(cpu: &mut Cpu, op: Arith, a: F80, b: F80, denormal_source: bool) -> F80 {
    cpu.state.fpu.fsw &= !C1;
    if a.is_unsupported() || b.is_unsupported() {
        raise(cpu, IE);
        return F80::INDEFINITE;
    }
    if a.is_nan() || b.is_nan() {
        if a.is_snan() || b.is_snan() {
            raise(cpu, IE);
        }
        let r = match (a.is_nan(), b.is_nan()) {
            // Both NaNs: the one with the larger significand, the positive one of
            // two alike.
            (true, true) => {
                // A QNaN wins over an SNaN.
                let (ma, mb) = (a.m << 1, b.m << 1);
                if b.is_snan() && !a.is_snan() {
                    a
                } else if a.is_snan() && !b.is_snan() {
                    b
                } else if ma > mb || (ma == mb && !a.sign()) {
                    a
                } else {
                    b
                }
            }
            (true, false) => a,
            _ => b,
        };
        return r.quiet();
    }
    // A division of a finite number by zero reports ZE alone.
    let zero_divide = op == Arith::Div && b.is_zero() && !a.is_zero() && !a.is_inf();
    if !zero_divide && (denormal_source || a.is_denormal() || b.is_denormal()) {
        raise(cpu, DE);
    }
    let (p, rc) = (f80::precision(cpu.state.fpu.fcw), rc(cpu));
    let r = match op {
        Arith::Add => f80::add(a, b, false, p, rc),
        Arith::Sub => f80::add(a, b, true, p, rc),
        Arith::Mul => f80::mul(a, b, p, rc),
        Arith::Div => f80::div(a, b, p, rc),
    };
    rounded(cpu, r)
}

/// Takes a rounded result's flags and C1.
fn rounded(cpu: &mut Cpu, r: f80::Rounded) -> F80 {
    raise(cpu, r.flags);
    if r.up {
        cpu.state.fpu.fsw |= C1;
    }
    r.v
}

/// Widens an f64 result: NaN from non-NaN operands is an invalid operation.
fn finish(cpu: &mut Cpu, r: f64) -> F80 {
    if r.is_nan() {
        raise(cpu, IE);
        return F80::INDEFINITE;
    }
    F80::from_f64(r)
}

fn set_cc(cpu: &mut Cpu, c: u16) {
    let f = &mut cpu.state.fpu;
    f.fsw = (f.fsw & !CC) | (c & CC);
}

/// FCOM-style condition codes (C3 C2 C0) of a comparison; `quiet`: only SNaNs raise IE.
fn compare(cpu: &mut Cpu, a: F80, b: F80, quiet: bool) -> Option<std::cmp::Ordering> {
    if a.is_unsupported() || b.is_unsupported() {
        raise(cpu, IE);
        return None;
    }
    let r = a.compare(b);
    if r.is_none() && (!quiet || a.is_snan() || b.is_snan()) {
        raise(cpu, IE);
    }
    // A NaN operand outranks a denormal one.
    if r.is_some() && (a.is_denormal() || b.is_denormal()) {
        raise(cpu, DE);
    }
    r
}

fn x87_cc(r: Option<std::cmp::Ordering>) -> u16 {
    use std::cmp::Ordering::*;
    match r {
        None => C3 | C2 | C0,
        Some(Less) => C0,
        Some(Equal) => C3,
        Some(Greater) => 0,
    }
}

fn eflags_cc(cpu: &mut Cpu, r: Option<std::cmp::Ordering>) {
    use quern_core::regs::flags::{AF, CF, OF, PF, SF, ZF};
    use std::cmp::Ordering::*;
    let bits = match r {
        None => ZF | PF | CF,
        Some(Less) => CF,
        Some(Equal) => ZF,
        Some(Greater) => 0,
    };
    let f = cpu.state.flags() & !(ZF | PF | CF | OF | SF | AF);
    cpu.state.set_flags(f | bits);
}

/// `v` narrowed for a store, its flags raised and C1 set when the rounding increased
/// the magnitude.
fn to_bin_c1(cpu: &mut Cpu, v: F80, p: u32, ebits: u32, rc: u32) -> u64 {
    let (bits, fl) = v.to_bin(p, ebits, rc);
    raise(cpu, fl as u16);
    if fl & F_PE != 0 && !v.is_nan() {
        let (t, _) = v.to_bin(p, ebits, RC_ZERO);
        let mag = !(1u64 << (p - 1 + ebits));
        if bits & mag > t & mag {
            cpu.state.fpu.fsw |= C1;
        }
    }
    bits
}

/// Stores ST0 to memory in the operand's format.
fn store(cpu: &mut Cpu, ins: &Instruction, truncate: bool) -> Result<()> {
    let v = st(cpu, 0);
    let a = Operands { cpu, ins }.linear();
    let rc = if truncate { RC_ZERO } else { rc(cpu) };
    let int = |cpu: &mut Cpu, bits: u32| -> u64 {
        let lim = 1u64 << (bits - 1);
        match v.round_int(rc).filter(|_| !v.is_unsupported()) {
            Some((s, mag, inexact)) if (s && mag <= lim) || (!s && mag < lim) => {
                if inexact {
                    raise(cpu, PE);
                    if v.round_int(RC_ZERO).is_some_and(|(_, t, _)| mag > t) {
                        cpu.state.fpu.fsw |= C1;
                    }
                }
                if s {
                    mag.wrapping_neg()
                } else {
                    mag
                }
            }
            _ => {
                raise(cpu, IE);
                lim
            }
        }
    };
    let v = if v.is_unsupported() && ins.memory_size() != MemorySize::Float80 {
        raise(cpu, IE);
        F80::INDEFINITE
    } else {
        v
    };
    match ins.memory_size() {
        MemorySize::Float32 => {
            let bits = to_bin_c1(cpu, v, 24, 8, rc);
            cpu.write_n(a, bits, 4)
        }
        MemorySize::Float64 => {
            let bits = to_bin_c1(cpu, v, 53, 11, rc);
            cpu.write_n(a, bits, 8)
        }
        MemorySize::Float80 => cpu.write(a, &v.to_bytes()),
        MemorySize::Int16 => {
            let r = int(cpu, 16);
            cpu.write_n(a, r, 2)
        }
        MemorySize::Int32 => {
            let r = int(cpu, 32);
            cpu.write_n(a, r, 4)
        }
        MemorySize::Int64 => {
            let r = int(cpu, 64);
            cpu.write_n(a, r, 8)
        }
        s => {
            log::debug!("tcg x87: unexpected store size {s:?}");
            Err(Exception::ud())
        }
    }
}

fn fcmov_taken(cpu: &Cpu, m: Mnemonic) -> bool {
    use quern_core::regs::flags::{CF, PF, ZF};
    use Mnemonic::*;
    let f = cpu.state.flags();
    let (c, z, p) = (f & CF != 0, f & ZF != 0, f & PF != 0);
    match m {
        Fcmovb => c,
        Fcmove => z,
        Fcmovbe => c || z,
        Fcmovu => p,
        Fcmovnb => !c,
        Fcmovne => !z,
        Fcmovnbe => !c && !z,
        _ => !p,
    }
}

fn data_op(cpu: &mut Cpu, ins: &Instruction) -> Result<()> {
    use Mnemonic::*;
    let m = ins.mnemonic();
    // Condition codes not set below are left as they were, except C1 which most
    // instructions clear (round-up indication, not tracked).
    match m {
        Fld | Fild => {
            cpu.state.fpu.fsw &= !C1;
            if ins.op0_kind() != OpKind::Memory && is_empty(cpu, sti(ins.op0_register())) {
                // Underflow outranks a full stack: C1 stays clear.
                underflow(cpu, None);
                push_raw(cpu, F80::INDEFINITE);
                return Ok(());
            }
            // A full stack takes the indefinite without the operand's own flags.
            let v = if push_overflows(cpu) {
                F80::INDEFINITE
            } else if ins.op0_kind() == OpKind::Memory {
                load_mem(cpu, ins)?
            } else {
                st(cpu, sti(ins.op0_register()))
            };
            push(cpu, v);
        }
        Fld1 | Fldz | Fldpi | Fldl2e | Fldl2t | Fldlg2 | Fldln2 => {
            let up = rc(cpu) == RC_UP;
            let down = matches!(rc(cpu), RC_DOWN | RC_ZERO);
            // Round-to-nearest values; the directed modes take the neighbour where
            // the nearest value rounded up (pi, lg2, ln2, l2e) or down (l2t).
            let v = match m {
                Fld1 => F80::ONE,
                Fldz => F80::ZERO,
                Fldpi => k(0x4000, 0xc90f_daa2_2168_c235 - u64::from(down)),
                Fldl2e => k(0x3fff, 0xb8aa_3b29_5c17_f0bc - u64::from(down)),
                Fldl2t => k(0x4000, 0xd49a_784b_cd1b_8afe + u64::from(up)),
                Fldlg2 => k(0x3ffd, 0x9a20_9a84_fbcf_f799 - u64::from(down)),
                _ => k(0x3ffe, 0xb172_17f7_d1cf_79ac - u64::from(down)),
            };
            cpu.state.fpu.fsw &= !C1;
            push(cpu, v);
        }
        Fst | Fstp => {
            cpu.state.fpu.fsw &= !C1;
            if ins.op0_kind() == OpKind::Memory {
                store(cpu, ins, false)?;
            } else {
                let v = st(cpu, 0);
                set_st(cpu, sti(ins.op0_register()), v);
            }
            if m == Fstp {
                pop(cpu);
            }
        }
        Fist | Fistp | Fisttp => {
            cpu.state.fpu.fsw &= !C1;
            store(cpu, ins, m == Fisttp)?;
            if m != Fist {
                pop(cpu);
            }
        }
        Fxch => {
            let i = sti(ins.op_register(ins.op_count() - 1));
            let (a, b) = (st(cpu, 0), st(cpu, i));
            set_st(cpu, 0, b);
            set_st(cpu, i, a);
            cpu.state.fpu.fsw &= !C1;
        }
        Fcmovb | Fcmove | Fcmovbe | Fcmovu | Fcmovnb | Fcmovne | Fcmovnbe | Fcmovnu => {
            let i = sti(ins.op1_register());
            if is_empty(cpu, 0) || is_empty(cpu, i) {
                // Whether or not the condition holds.
                underflow(cpu, Some(0));
                return Ok(());
            }
            let v = raw(cpu, i);
            if fcmov_taken(cpu, m) {
                set_st(cpu, 0, v);
            }
        }
        Fadd | Faddp | Fiadd | Fsub | Fsubp | Fisub | Fsubr | Fsubrp | Fisubr | Fmul | Fmulp | Fimul | Fdiv | Fdivp
        | Fidiv | Fdivr | Fdivrp | Fidivr => {
            let (op, rev, pops) = arith_form(m).expect("matched above");
            // (destination, source register): FADDP etc. without operands are
            // ST(1) op ST(0); a memory operand's destination is ST(0).
            let (dst, src) = match ins.op_count() {
                2 => (sti(ins.op0_register()), Some(sti(ins.op1_register()))),
                1 => (0, None),
                _ => (1, Some(0)),
            };
            if is_empty(cpu, dst) || src.is_some_and(|s| is_empty(cpu, s)) {
                underflow(cpu, Some(dst));
                if pops {
                    pop(cpu);
                }
                return Ok(());
            }
            let a = raw(cpu, dst);
            let (b, denormal) = match src {
                Some(s) => (raw(cpu, s), false),
                None => load_mem_quiet(cpu, ins)?,
            };
            let r = if rev { arith(cpu, op, b, a, denormal) } else { arith(cpu, op, a, b, denormal) };
            set_st(cpu, dst, r);
            if pops {
                pop(cpu);
            }
        }
        Fchs | Fabs => {
            if is_empty(cpu, 0) {
                underflow(cpu, Some(0));
                return Ok(());
            }
            let v = raw(cpu, 0);
            set_st(cpu, 0, if m == Fchs { v.negate() } else { v.abs() });
            cpu.state.fpu.fsw &= !C1;
        }
        Fsqrt => {
            let v = st(cpu, 0);
            cpu.state.fpu.fsw &= !C1;
            let r = if v.is_unsupported() {
                raise(cpu, IE);
                F80::INDEFINITE
            } else if v.is_nan() {
                if v.is_snan() {
                    raise(cpu, IE);
                }
                v.quiet()
            } else {
                // A negative operand is invalid, which outranks denormal.
                if v.is_denormal() && !v.sign() {
                    raise(cpu, DE);
                }
                let r = f80::sqrt(v, f80::precision(cpu.state.fpu.fcw), rc(cpu));
                rounded(cpu, r)
            };
            set_st(cpu, 0, r);
        }
        Frndint => {
            let v = st(cpu, 0);
            cpu.state.fpu.fsw &= !C1;
            let r = match v.round_int(rc(cpu)) {
                _ if v.is_unsupported() => {
                    raise(cpu, IE);
                    F80::INDEFINITE
                }
                _ if v.exp() >= 16383 + 63 => v.quiet_if_nan(cpu),
                Some((s, mag, inexact)) => {
                    if v.is_denormal() {
                        raise(cpu, DE);
                    }
                    if inexact {
                        raise(cpu, PE);
                        if v.round_int(RC_ZERO).is_some_and(|(_, t, _)| mag > t) {
                            cpu.state.fpu.fsw |= C1;
                        }
                    }
                    F80::from_mag(s, mag)
                }
                None => v,
            };
            set_st(cpu, 0, r);
        }
        Fscale => {
            let (a, b) = (st(cpu, 0), st(cpu, 1));
            let r = if a.is_nan() || b.is_nan() {
                arith(cpu, Arith::Add, a, b, false)
            } else if a.is_zero() || a.is_inf() || b.is_inf() {
                // Infinite scales: 0 × 2^+inf and inf × 2^-inf are invalid.
                if b.is_inf() && ((a.is_zero() && !b.sign()) || (a.is_inf() && b.sign())) {
                    raise(cpu, IE);
                    F80::INDEFINITE
                } else if b.is_inf() && !a.is_zero() && !a.is_inf() {
                    if b.sign() {
                        F80 { se: a.se & 0x8000, m: 0 }
                    } else {
                        F80 { se: a.se | 0x7fff, m: 1 << 63 }
                    }
                } else {
                    a
                }
            } else {
                let n = b.round_int(RC_ZERO).map_or(1 << 20, |(s, mag, _)| {
                    let mag = mag.min(1 << 20) as i64;
                    if s {
                        -mag
                    } else {
                        mag
                    }
                });
                let (s, mm, e) = a.parts();
                let ne = e + n as i32;
                if (1 - 16383..=16383).contains(&ne) {
                    F80 { se: u16::from(s) << 15 | (ne + 16383) as u16, m: mm }
                } else {
                    finish(cpu, ldexp(a.to_f64(), n as i32))
                }
            };
            set_st(cpu, 0, r);
        }
        Fxtract => {
            let empty = is_empty(cpu, 0);
            if empty || push_overflows(cpu) || raw(cpu, 0).is_unsupported() {
                // Both halves are the indefinite; C1 tells an overflow from the rest.
                cpu.state.fpu.fsw &= !C1;
                let overflow = !empty && push_overflows(cpu);
                if empty || overflow {
                    underflow(cpu, Some(0));
                } else {
                    raise(cpu, IE);
                    set_st(cpu, 0, F80::INDEFINITE);
                }
                push_raw(cpu, F80::INDEFINITE);
                if overflow {
                    cpu.state.fpu.fsw |= C1;
                }
                return Ok(());
            }
            cpu.state.fpu.fsw &= !C1;
            let v = st(cpu, 0);
            if v.is_denormal() {
                raise(cpu, DE);
            }
            if v.is_zero() {
                raise(cpu, ZE);
                set_st(cpu, 0, F80 { se: 0xffff, m: 1 << 63 });
                push(cpu, v);
            } else if v.exp() == 0x7fff {
                let v = v.quiet_if_nan(cpu);
                set_st(cpu, 0, if v.is_inf() { v.abs() } else { v });
                push(cpu, v);
            } else {
                let (s, mm, e) = v.parts();
                set_st(cpu, 0, F80::from_int(i64::from(e)));
                push(cpu, F80 { se: u16::from(s) << 15 | 0x3fff, m: mm });
            }
        }
        Fprem | Fprem1 => {
            let (a, b) = (st(cpu, 0), st(cpu, 1));
            if a.is_nan() || b.is_nan() || a.is_inf() || b.is_zero() {
                let r =
                    if a.is_nan() || b.is_nan() { arith(cpu, Arith::Add, a, b, false) } else { finish(cpu, f64::NAN) };
                set_st(cpu, 0, r);
                set_cc(cpu, 0);
            } else {
                let (x, y) = (a.to_f64(), b.to_f64());
                let mut r = x % y;
                let mut q = ((x - r) / y).abs();
                if m == Fprem1 {
                    let h = y.abs() / 2.0;
                    if r.abs() > h || (r.abs() == h && q % 2.0 == 1.0) {
                        r -= y.abs().copysign(r);
                        q += 1.0;
                    }
                }
                let q = q as u64;
                let cc =
                    if q & 4 != 0 { C0 } else { 0 } | if q & 2 != 0 { C3 } else { 0 } | if q & 1 != 0 { C1 } else { 0 };
                let r = if r == 0.0 { 0.0f64.copysign(x) } else { r };
                set_st(cpu, 0, F80::from_f64(r));
                set_cc(cpu, cc);
            }
        }
        Fsin | Fcos | Fsincos | Fptan | F2xm1 => {
            let v = st(cpu, 0);
            if v.is_nan() {
                let q = v.quiet_if_nan(cpu);
                set_st(cpu, 0, q);
                if matches!(m, Fsincos | Fptan) {
                    push(cpu, q);
                }
                return Ok(());
            }
            let x = v.to_f64();
            if m != F2xm1 && x.abs() >= (1u64 << 63) as f64 {
                // |x| >= 2^63: out of range, C2 set, ST0 unchanged.
                set_cc(cpu, C2);
                return Ok(());
            }
            match m {
                Fsin => {
                    let r = finish(cpu, x.sin());
                    set_st(cpu, 0, r);
                }
                Fcos => {
                    let r = finish(cpu, x.cos());
                    set_st(cpu, 0, r);
                }
                Fsincos => {
                    let (s, c) = x.sin_cos();
                    let (s, c) = (finish(cpu, s), finish(cpu, c));
                    set_st(cpu, 0, s);
                    push(cpu, c);
                }
                Fptan => {
                    let r = finish(cpu, x.tan());
                    set_st(cpu, 0, r);
                    push(cpu, F80::ONE);
                }
                _ => {
                    let r = finish(cpu, (x * std::f64::consts::LN_2).exp_m1());
                    set_st(cpu, 0, r);
                }
            }
            set_cc(cpu, 0);
        }
        Fpatan | Fyl2x | Fyl2xp1 => {
            let (a, b) = (st(cpu, 0), st(cpu, 1));
            let r = if a.is_nan() || b.is_nan() {
                arith(cpu, Arith::Add, a, b, false)
            } else {
                let (x, y) = (a.to_f64(), b.to_f64());
                match m {
                    Fpatan => finish(cpu, y.atan2(x)),
                    Fyl2x => {
                        if x == 0.0 && y != 0.0 && y.is_finite() {
                            raise(cpu, ZE);
                        }
                        if x < 0.0 {
                            finish(cpu, f64::NAN)
                        } else {
                            finish(cpu, y * x.log2())
                        }
                    }
                    _ => finish(cpu, y * x.ln_1p() / std::f64::consts::LN_2),
                }
            };
            set_st(cpu, 1, r);
            pop(cpu);
        }
        Fcom | Fcomp | Fucom | Fucomp | Ficom | Ficomp => {
            let b = if ins.op_count() == 0 { st(cpu, 1) } else { operand(cpu, ins, ins.op_count() - 1)? };
            let a = st(cpu, 0);
            let r = compare(cpu, a, b, matches!(m, Fucom | Fucomp));
            set_cc(cpu, x87_cc(r));
            if matches!(m, Fcomp | Fucomp | Ficomp) {
                pop(cpu);
            }
        }
        Fcompp | Fucompp => {
            let (a, b) = (st(cpu, 0), st(cpu, 1));
            let r = compare(cpu, a, b, m == Fucompp);
            set_cc(cpu, x87_cc(r));
            pop(cpu);
            pop(cpu);
        }
        Fcomi | Fcomip | Fucomi | Fucomip => {
            let (a, b) = (st(cpu, 0), st(cpu, sti(ins.op1_register())));
            let r = compare(cpu, a, b, matches!(m, Fucomi | Fucomip));
            eflags_cc(cpu, r);
            if matches!(m, Fcomip | Fucomip) {
                pop(cpu);
            }
        }
        Ftst => {
            let a = st(cpu, 0);
            let r = compare(cpu, a, F80::ZERO, false);
            set_cc(cpu, x87_cc(r));
        }
        Fxam => {
            let v = raw(cpu, 0);
            let c = if is_empty(cpu, 0) {
                C3 | C0
            } else if v.is_nan() {
                C0
            } else if v.is_inf() {
                C2 | C0
            } else if v.is_zero() {
                C3
            } else if v.exp() == 0 {
                C3 | C2
            } else if v.m >> 63 == 0 {
                0 // unnormal: unsupported
            } else {
                C2
            };
            set_cc(cpu, c | if v.sign() { C1 } else { 0 });
        }
        Ffree | Ffreep => {
            let p = phys(cpu, sti(ins.op0_register()));
            cpu.state.fpu.ftw &= !(1 << p);
            // C1 is undefined; the hardware clears it.
            cpu.state.fpu.fsw &= !C1;
            if m == Ffreep {
                pop(cpu);
            }
        }
        Fincstp => {
            set_top(cpu, top(cpu) + 1);
            cpu.state.fpu.fsw &= !C1;
        }
        Fdecstp => {
            set_top(cpu, top(cpu) + 7);
            cpu.state.fpu.fsw &= !C1;
        }
        _ => {} // FNOP
    }
    Ok(())
}

impl F80 {
    fn quiet_if_nan(self, cpu: &mut Cpu) -> F80 {
        if self.is_snan() {
            raise(cpu, IE);
        }
        if self.is_nan() {
            self.quiet()
        } else {
            self
        }
    }
}

/// x × 2^n in f64 with one rounding at most in the usual ranges.
pub(crate) fn ldexp(mut x: f64, mut n: i32) -> f64 {
    while n > 1000 {
        x *= f64::from_bits((1000 + 1023) << 52);
        n -= 1000;
    }
    while n < -1000 {
        x *= f64::from_bits((1023 - 1000) << 52);
        n += 1000;
    }
    x * f64::from_bits(((n + 1023) as u64) << 52)
}

/// Runs test snippets both on the host CPU and on the interpreter, for comparisons.
#[cfg(test)]
// `on_host` (x86-64 only) needs imports the rest does not.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
pub(crate) mod harness {
    use iced_x86::code_asm::*;
    use iced_x86::{Decoder, DecoderOptions};
    use quern_core::regs::ctrl::CR4_OSFXSR;

    use crate::cpu::{Exception, Result};
    use crate::interp::testutil::{asm, cpu, peek, poke, STATUS};
    use crate::interp::{exec, Step};

    /// Guest address of the data area; RDI points at it on both sides.
    pub const DATA: u64 = 0x2000;
    pub const N: usize = 1024;
    /// Slots of RAX, RCX, RDX, RSI (loaded before, stored after) and the status flags.
    pub const RAX: usize = 0x3c0;
    pub const RCX: usize = 0x3c8;
    pub const RDX: usize = 0x3d0;
    pub const RSI: usize = 0x3d8;
    pub const FLAGS: usize = 0x3f8;
    const REGS: [(usize, usize); 4] = [(RAX, 0), (RCX, 1), (RDX, 2), (RSI, 6)];

    #[repr(C, align(64))]
    #[derive(Clone)]
    pub struct Buf(pub [u8; N]);

    impl Default for Buf {
        fn default() -> Self {
            Buf([0; N])
        }
    }

    impl Buf {
        pub fn put(&mut self, at: usize, b: &[u8]) -> &mut Self {
            self.0[at..at + b.len()].copy_from_slice(b);
            self
        }
        pub fn u64(&self, at: usize) -> u64 {
            u64::from_le_bytes(self.0[at..at + 8].try_into().unwrap())
        }
        pub fn u32(&self, at: usize) -> u32 {
            u32::from_le_bytes(self.0[at..at + 4].try_into().unwrap())
        }
    }

    /// Runs `code` (64-bit, position independent, no stack use) on the host with RDI
    /// at `data`; the caller's FCW and MXCSR are restored and the x87 stack emptied.
    #[cfg(target_arch = "x86_64")]
    pub fn on_host(code: &[u8], data: &mut Buf) {
        let pro = asm(64, |a| {
            a.sub(rsp, 24)?;
            a.fnstcw(word_ptr(rsp))?;
            a.stmxcsr(dword_ptr(rsp + 4))?;
            // The state the emulators start in (JIT code leaves sticky flags behind).
            a.fninit()?;
            a.xor(r8d, r8d)?;
            a.push(r8)?;
            a.popfq()?;
            a.mov(rax, qword_ptr(rdi + RAX as i32))?;
            a.mov(rcx, qword_ptr(rdi + RCX as i32))?;
            a.mov(rdx, qword_ptr(rdi + RDX as i32))?;
            a.mov(rsi, qword_ptr(rdi + RSI as i32))
        });
        let epi = asm(64, |a| {
            a.pushfq()?;
            a.pop(r8)?;
            a.mov(qword_ptr(rdi + FLAGS as i32), r8)?;
            a.mov(qword_ptr(rdi + RAX as i32), rax)?;
            a.mov(qword_ptr(rdi + RCX as i32), rcx)?;
            a.mov(qword_ptr(rdi + RDX as i32), rdx)?;
            a.mov(qword_ptr(rdi + RSI as i32), rsi)?;
            a.fninit()?;
            a.fldcw(word_ptr(rsp))?;
            a.ldmxcsr(dword_ptr(rsp + 4))?;
            a.add(rsp, 24)?;
            a.ret()
        });
        let all: Vec<u8> = [pro, code.to_vec(), epi].concat();
        // SAFETY: a private anonymous mapping, written then made executable; the code
        // follows the SysV ABI (only caller-saved registers changed, FCW/MXCSR and the
        // stack restored, x87 stack empty) and touches memory only through RDI, which
        // points at `data`.
        unsafe {
            let len = 4096;
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            std::ptr::copy_nonoverlapping(all.as_ptr(), p as *mut u8, all.len());
            assert_eq!(libc::mprotect(p, len, libc::PROT_READ | libc::PROT_EXEC), 0);
            let f: extern "C" fn(*mut u8) = std::mem::transmute(p);
            f(data.0.as_mut_ptr());
            libc::munmap(p, len);
        }
        let fl = data.u64(FLAGS) & STATUS;
        data.put(FLAGS, &fl.to_le_bytes());
    }

    /// A 64-bit test CPU with OSFXSR set.
    pub fn sse_cpu() -> Box<crate::cpu::Cpu> {
        let mut c = cpu(64);
        c.state.cr4 |= CR4_OSFXSR;
        c
    }

    /// Runs `code` on a software CPU (see [`sse_cpu`]) with the same conventions.
    pub fn on_emu_cpu(c: &mut crate::cpu::Cpu, code: &[u8], data: &mut Buf) -> Result<()> {
        poke(c, DATA, &data.0);
        c.state.gpr[7] = DATA;
        for (slot, r) in REGS {
            c.state.gpr[r] = data.u64(slot);
        }
        c.state.rip = 0x1000;
        let mut d = Decoder::with_ip(64, code, 0x1000, DecoderOptions::NONE);
        while d.can_decode() {
            let ins = d.decode();
            match exec(c, &ins)? {
                Step::Next => c.state.rip = ins.next_ip(),
                s => panic!("unexpected {s:?}"),
            }
        }
        data.0.copy_from_slice(&peek(c, DATA, N));
        for (slot, r) in REGS {
            data.put(slot, &c.state.gpr[r].to_le_bytes());
        }
        data.put(FLAGS, &(c.state.flags() & STATUS).to_le_bytes());
        Ok(())
    }

    pub fn on_emu(code: &[u8], data: &mut Buf) -> Result<()> {
        EMU.with(|c| {
            let mut c = c.borrow_mut();
            let c = c.get_or_insert_with(sse_cpu);
            reset(c);
            on_emu_cpu(c, code, data)
        })
    }

    /// Puts `c` back into [`sse_cpu`]'s state for a run: a reused CPU (the state is
    /// megabytes, too many to make one a run).
    fn reset(c: &mut crate::cpu::Cpu) {
        TEMPLATE.with(|t| {
            let (s, t) = (&mut c.state, &t.state);
            (s.cr0, s.cr4, s.efer, s.seg, s.rip, s.gpr) = (t.cr0, t.cr4, t.efer, t.seg, t.rip, t.gpr);
        });
        let s = &mut c.state;
        s.fpu = Default::default();
        s.set_flags(0);
        s.halted = 0;
        s.fault.vector = crate::state::NO_FAULT;
        s.tlb.flush();
    }

    thread_local! {
        static TEMPLATE: Box<crate::cpu::Cpu> = sse_cpu();
        static EMU: std::cell::RefCell<Option<Box<crate::cpu::Cpu>>> = const { std::cell::RefCell::new(None) };
        /// A JIT vCPU per test thread, reused (its translations dropped each run).
        static JIT: std::cell::RefCell<Option<crate::exec::TcgVcpu>> = const { std::cell::RefCell::new(None) };
    }

    /// Runs `code` (then HLT) on the JIT, with the CPU of [`sse_cpu`] changed by
    /// `setup`, and the same conventions; `Err` when it did not reach its HLT (an
    /// exception reaches a handler that records its vector: "exception N").
    pub fn on_jit_cpu(
        setup: &dyn Fn(&mut crate::cpu::Cpu),
        code: &[u8],
        data: &mut Buf,
    ) -> std::result::Result<(), String> {
        use quern_core::Vcpu;
        const GDT: u64 = 0x6000;
        const IDT: u64 = 0x7000;
        const HANDLERS: u64 = 0x9000;
        JIT.with(|j| {
            let mut j = j.borrow_mut();
            let v = j.get_or_insert_with(|| {
                let mem = std::sync::Arc::new(quern_core::GuestMemory::flat(crate::interp::testutil::RAM).unwrap());
                crate::exec::TcgVcpu::new(mem).unwrap()
            });
            let c = v.test_cpu();
            reset(c);
            let s = &mut c.state;
            // A 64-bit code segment (selector 8) and 32 interrupt gates to handlers that
            // put 0x100 | vector in R15 and halt.
            s.seg[crate::state::CS].selector = 8;
            s.gdt = quern_core::regs::DescriptorTable { base: GDT, limit: 15 };
            s.idt = quern_core::regs::DescriptorTable { base: IDT, limit: 32 * 16 - 1 };
            poke(c, GDT, &[0u64.to_le_bytes(), 0x0020_9a00_0000_0000u64.to_le_bytes()].concat());
            for vec in 0..32u64 {
                let h = HANDLERS + 16 * vec;
                let lo = (h & 0xffff) | 8 << 16 | 0x8e << 40 | (h >> 16 & 0xffff) << 48;
                poke(c, IDT + 16 * vec, &[lo.to_le_bytes(), (h >> 32).to_le_bytes()].concat());
                poke(c, h, &[0x41, 0xbf, vec as u8, 1, 0, 0, 0xf4]);
            }
            setup(c);
            let mut all = code.to_vec();
            all.push(0xf4);
            poke(c, 0x1000, &all);
            poke(c, DATA, &data.0);
            c.state.gpr[7] = DATA;
            for (slot, r) in REGS {
                c.state.gpr[r] = data.u64(slot);
            }
            let ops = crate::interp::testutil::Ports::default();
            let exit = v.run(&ops).map_err(|e| format!("{e}"))?;
            let c = v.test_cpu();
            if exit != quern_core::VcpuExit::Halted {
                return Err(format!("{exit:?} at rip {:#x}", c.state.rip));
            }
            if c.state.gpr[15] & 0x100 != 0 {
                return Err(format!("exception {}", c.state.gpr[15] & 0xff));
            }
            data.0.copy_from_slice(&peek(c, DATA, N));
            for (slot, r) in REGS {
                data.put(slot, &c.state.gpr[r].to_le_bytes());
            }
            data.put(FLAGS, &(c.state.flags() & STATUS).to_le_bytes());
            Ok(())
        })
    }

    pub fn on_jit(code: &[u8], data: &mut Buf) -> std::result::Result<(), String> {
        on_jit_cpu(&|_| {}, code, data)
    }

    /// The vector of the exception `code` raises on the JIT (with `setup`), and the
    /// XMM registers and MXCSR it leaves.
    pub fn jit_fault(setup: &dyn Fn(&mut crate::cpu::Cpu), code: &[u8]) -> (u8, [[u8; 16]; 16], u32) {
        let mut b = Buf::default();
        let e = on_jit_cpu(setup, code, &mut b).expect_err("expected a fault");
        let v = e.strip_prefix("exception ").unwrap_or_else(|| panic!("{e}")).parse().unwrap();
        JIT.with(|j| {
            let mut j = j.borrow_mut();
            let c = j.as_mut().unwrap().test_cpu();
            (v, c.state.fpu.xmm, c.state.fpu.mxcsr)
        })
    }

    /// Runs on both and asserts the data areas match outside `ignore`.
    pub fn check(name: &str, code: &[u8], data: &Buf, ignore: &[std::ops::Range<usize>]) -> Buf {
        check_fix(name, code, data, &|b: &mut Buf| {
            for r in ignore {
                b.0[r.clone()].fill(0);
            }
        })
    }

    /// Runs on the host, the interpreter and the JIT and asserts the data areas match
    /// after `fix` ran on each; returns the host's. Elsewhere than on x86-64 the
    /// interpreter stands in for the host (the JIT is compared with it; the
    /// differential cases, recorded on x86-64, compare both with x86 there).
    pub fn check_fix(name: &str, code: &[u8], data: &Buf, fix: &dyn Fn(&mut Buf)) -> Buf {
        let (mut e, mut j) = (data.clone(), data.clone());
        if let Err(x) = on_emu(code, &mut e) {
            panic!("{name}: emulator raised {x:?}");
        }
        if let Err(x) = on_jit(code, &mut j) {
            panic!("{name}: the JIT stopped: {x}");
        }
        #[cfg(target_arch = "x86_64")]
        let mut h = {
            let mut h = data.clone();
            on_host(code, &mut h);
            h
        };
        #[cfg(not(target_arch = "x86_64"))]
        let mut h = e.clone();
        fix(&mut h);
        fix(&mut e);
        fix(&mut j);
        for i in (0..N).step_by(8) {
            assert_eq!(
                e.u64(i),
                h.u64(i),
                "{name}: data at {i:#x} differs (emulator vs host); inputs {:02x?}",
                &data.0[..0x40]
            );
            assert_eq!(
                j.u64(i),
                h.u64(i),
                "{name}: data at {i:#x} differs (JIT vs host); inputs {:02x?}",
                &data.0[..0x40]
            );
        }
        h
    }

    /// The exception the interpreter raises for `code`.
    pub fn fault(c: &mut crate::cpu::Cpu, code: &[u8]) -> Exception {
        let mut b = Buf::default();
        on_emu_cpu(c, code, &mut b).expect_err("expected a fault")
    }
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    #[cfg(target_arch = "x86_64")]
    use super::harness::on_host;
    #[cfg(target_arch = "x86_64")]
    use super::harness::on_jit;
    use super::harness::{check, check_fix, fault, on_emu_cpu, sse_cpu, Buf, DATA, RAX};

    /// Clears PE and C1 in the status words stored at `offs`: the f64 arithmetic
    /// neither tracks the 80-bit result's inexactness nor its rounding direction.
    fn no_pe(offs: &'static [usize]) -> impl Fn(&mut Buf) {
        move |b: &mut Buf| {
            for &o in offs {
                b.0[o] &= !(PE as u8);
                b.0[o + 1] &= !((C1 >> 8) as u8);
            }
        }
    }
    use super::*;
    use crate::interp::testutil::asm;

    /// f64-exact values (sums and products beyond the f64 range would differ: see the
    /// module notes).
    const VALUES: [f64; 14] =
        [1.5, -2.25, 3.0, 0.0, -0.0, 1024.0, 0.375, -7.0, 1e10, 0.1, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1e-30];

    fn inputs(a: f64, b: f64) -> Buf {
        let mut d = Buf::default();
        d.put(0, &a.to_le_bytes()).put(8, &b.to_le_bytes());
        d
    }

    /// The root of a denormal is normal, its square is not: the rounding error's sign
    /// must still come out (it decides PE and the directed roundings).
    #[test]
    fn the_root_of_a_denormal_is_inexact_and_rounds_by_mode() {
        let b = f64::from_bits(2); // 2^-1073: an irrational root
        let (near, dir, _) = op_f64(FOp::Sqrt, 0.0, b, RC_NEAR);
        assert_ne!(dir, 0, "inexact");
        let (down, _, _) = op_f64(FOp::Sqrt, 0.0, b, RC_DOWN);
        let (up, _, _) = op_f64(FOp::Sqrt, 0.0, b, RC_UP);
        assert_eq!(up.to_bits() - down.to_bits(), 1, "one ulp apart");
        assert!(near == down || near == up);
        // 2^-1074's root is 2^-537: exact.
        assert_eq!(op_f64(FOp::Sqrt, 0.0, f64::from_bits(1), RC_UP), (2f64.powi(-537), 0, false));
    }

    #[test]
    fn f80_conversions_are_exact() {
        for v in [1.0, -0.0, 0.1, 5e-324, -2.2250738585072014e-308, 1e308, f64::INFINITY, 3.5] {
            assert_eq!(F80::from_f64(v).to_f64().to_bits(), f64::to_bits(v), "{v}");
            let f = v as f32;
            assert_eq!(f64::from_bits(F80::from_f32(f).to_bin(53, 11, RC_NEAR).0), f as f64);
            assert_eq!(F80::from_f64(v).to_bin(24, 8, RC_NEAR).0 as u32, f.to_bits(), "{v}");
        }
        for i in [0i64, 1, -1, i64::MIN, i64::MAX, 12345] {
            assert_eq!(
                F80::from_int(i).round_int(RC_NEAR).map(|(s, m, _)| if s { m.wrapping_neg() } else { m }),
                Some(i as u64)
            );
        }
        assert_eq!(F80::from_f64(1.0), F80::ONE);
    }

    #[test]
    fn fninit_fnstsw_fnstcw_fldcw() {
        let mut c = sse_cpu();
        c.state.fpu.fcw = 0;
        c.state.fpu.fsw = 0xffff;
        c.state.fpu.ftw = 0xff;
        c.state.fpu.fip = 5;
        c.state.fpu.mxcsr = 0x1f80 | 1;
        let code = asm(64, |a| a.fninit());
        on_emu_cpu(&mut c, &code, &mut Buf::default()).unwrap();
        let f = &c.state.fpu;
        assert_eq!((f.fcw, f.fsw, f.ftw, f.fip, f.fdp, f.fop, f.mxcsr), (0x37f, 0, 0, 0, 0, 0, 0x1f81));
        let code = asm(64, |a| {
            a.fld1()?;
            a.fnstsw(ax)?;
            a.fnstsw(word_ptr(rdi + 0x10))?;
            a.fnstcw(word_ptr(rdi + 0x12))?;
            a.fldcw(word_ptr(rdi + 0x20))?;
            a.fnstcw(word_ptr(rdi + 0x14))?;
            a.fstp(st0)
        });
        let mut d = Buf::default();
        d.put(0x20, &0x0c7fu16.to_le_bytes());
        let h = check("fnstsw/fnstcw/fldcw", &code, &d, &[]);
        assert_eq!(h.u64(RAX) & 0xffff, 0x3800, "TOP = 7 after one push");
        assert_eq!(&h.0[0x10..0x16], &[0x00, 0x38, 0x7f, 0x03, 0x7f, 0x0c]);
    }

    #[test]
    fn x87_instructions_fault_with_em_or_ts() {
        for bit in [CR0_EM, CR0_TS] {
            let mut c = sse_cpu();
            c.state.cr0 |= bit;
            for code in [asm(64, |a| a.fninit()), asm(64, |a| a.fld1()), asm(64, |a| a.fxsave(ptr(rdi)))] {
                assert_eq!(fault(&mut c, &code).vector, vector::NM);
            }
        }
        let mut c = sse_cpu();
        c.state.cr0 |= CR0_EM;
        assert_eq!(fault(&mut c, &asm(64, |a| a.emms())).vector, vector::UD);
    }

    #[test]
    fn fxsave_matches_the_host_and_round_trips() {
        let code = asm(64, |a| {
            a.fld1()?;
            a.fldpi()?;
            a.fldz()?;
            a.fld(qword_ptr(rdi + 0x8))?;
            a.faddp(st1, st0)?;
            a.fxsave64(ptr(rdi + 0x200))?;
            a.fldl2e()?;
            a.fldl2t()?;
            a.fldlg2()?;
            a.fldln2()?;
            a.fincstp()?;
            a.fxsave(ptr(rdi + 0x40))
        });
        // FOP/FIP/FDP (6..24) and MXCSR_MASK differ by CPU; XMM registers are the host's.
        let ign = [0x46..0x58, 0x5c..0x60, 0xe0..0x200, 0x206..0x218, 0x21c..0x220, 0x2a0..0x3c0];
        check("fxsave", &code, &inputs(2.5, -3.25), &ign);

        // Round trip through memory, and the layout of FIP/FDP in both forms.
        let mut c = sse_cpu();
        let f = &mut c.state.fpu;
        f.fcw = 0x27f;
        f.fsw = 0x3000 | 0x41;
        f.ftw = 0x81;
        f.fop = 0x123;
        f.fip = 0x1122_3344_5566_7788;
        f.fdp = 0x99aa_bbcc_ddee_ff00;
        f.mxcsr = 0x1fa0;
        for i in 0..8 {
            f.st[i][..10].copy_from_slice(&[i as u8 + 1; 10]);
        }
        for i in 0..16 {
            f.xmm[i] = [0x10 + i as u8; 16];
        }
        let saved = c.state.fpu;
        let code = asm(64, |a| {
            a.fxsave64(ptr(rdi))?;
            a.fxsave(ptr(rdi + 0x200))?;
            a.fninit()?;
            a.fxrstor64(ptr(rdi))
        });
        let mut d = Buf::default();
        on_emu_cpu(&mut c, &code, &mut d).unwrap();
        let f = &c.state.fpu;
        assert_eq!(
            (f.fcw, f.fsw, f.ftw, f.fop, f.fip, f.fdp, f.mxcsr, f.st, f.xmm),
            (saved.fcw, saved.fsw, saved.ftw, saved.fop, saved.fip, saved.fdp, saved.mxcsr, saved.st, saved.xmm)
        );
        assert_eq!(d.u64(8), 0x1122_3344_5566_7788);
        assert_eq!(d.u64(16), 0x99aa_bbcc_ddee_ff00);
        assert_eq!(d.u32(24), 0x1fa0);
        assert_eq!(d.u32(28), MXCSR_MASK);
        assert_eq!(d.u64(0x200 + 8), 0x5566_7788, "32-bit FIP and a zero FCS");
        // TOP is 6: ST(0) is R6, ST(2) is R0.
        assert_eq!(&d.0[32..42], &[7; 10]);
        assert_eq!(&d.0[64..74], &[1; 10]);
        assert_eq!(&d.0[160 + 15 * 16..160 + 16 * 16], &[0x1f; 16]);

        // Misalignment and reserved MXCSR bits are #GP(0).
        let mut c = sse_cpu();
        assert_eq!(fault(&mut c, &asm(64, |a| a.fxsave(ptr(rdi + 8)))), Exception::gp0());
        let code = asm(64, |a| {
            a.fxsave(ptr(rdi))?;
            a.mov(dword_ptr(rdi + 24), 0x10000)?;
            a.fxrstor(ptr(rdi))
        });
        // The MOV is not an interpreter instruction: poke the bad MXCSR instead.
        let _ = code;
        let mut d = Buf::default();
        d.put(24, &0x1_0000u32.to_le_bytes());
        let e = on_emu_cpu(&mut c, &asm(64, |a| a.fxrstor(ptr(rdi))), &mut d).unwrap_err();
        assert_eq!(e, Exception::gp0());
    }

    #[test]
    fn fnsave_frstor_fnstenv_fldenv_round_trip() {
        let code = asm(64, |a| {
            a.fld1()?;
            a.fldz()?;
            a.fnstenv(ptr(rdi + 0x100))?;
            a.fldenv(ptr(rdi + 0x100))?;
            a.fnsave(ptr(rdi + 0x140))?;
            a.fnstsw(word_ptr(rdi + 0x1c0))?;
            a.frstor(ptr(rdi + 0x140))?;
            a.fstp(qword_ptr(rdi + 0x1c8))?;
            a.fstp(qword_ptr(rdi + 0x1d0))
        });
        // FIP/FOP/FDP and selectors differ; the rest must match the host.
        let ign = [0x10c..0x11c, 0x14c..0x15c];
        let h = check("fnsave", &code, &Buf::default(), &ign);
        assert_eq!(h.u64(0x1d0), 1f64.to_bits());
    }

    #[cfg(target_arch = "x86_64")]
    /// A block entered with another x87 stack than it was translated for: its guard
    /// sends each such entry through the interpreter for one instruction, and the
    /// results are the host's.
    #[test]
    fn a_block_entered_with_another_stack_steps_through_its_guard() {
        let code = asm(64, |a| {
            a.mov(ecx, 3)?;
            a.fld(qword_ptr(rdi))?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            // One push more at every turn: the block at `top` sees TOP 7, 6, 5.
            a.fld(qword_ptr(rdi + 8))?;
            a.fmul_2(st0, st1)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.fnstsw(word_ptr(rdi + 0x100))?;
            for off in [0x108, 0x110, 0x118, 0x120] {
                a.fstp(qword_ptr(rdi + off))?;
            }
            a.fnstsw(word_ptr(rdi + 0x102))
        });
        // (The interpreter alone runs no loops: host against JIT.)
        for &x in &VALUES {
            for &y in &VALUES {
                let (mut h, mut j) = (inputs(x, y), inputs(x, y));
                on_host(&code, &mut h);
                on_jit(&code, &mut j).unwrap();
                for i in (0x100..0x128).step_by(8) {
                    assert_eq!(j.u64(i), h.u64(i), "data at {i:#x} for {x}, {y}");
                }
            }
        }
    }

    /// Binary x87 arithmetic on f64-exact operands, register and memory forms.
    #[test]
    fn x87_arithmetic_matches_the_host() {
        type Gen = fn(&mut CodeAssembler) -> std::result::Result<(), IcedError>;
        let ops: [(&str, Gen); 12] = [
            ("faddp", |a| a.faddp(st1, st0)),
            ("fsubp", |a| a.fsubp(st1, st0)),
            ("fsubrp", |a| a.fsubrp(st1, st0)),
            ("fmulp", |a| a.fmulp(st1, st0)),
            ("fdivp", |a| a.fdivp(st1, st0)),
            ("fdivrp", |a| a.fdivrp(st1, st0)),
            ("fadd st0,st1", |a| a.fadd_2(st0, st1)),
            ("fsub st0,st1", |a| a.fsub_2(st0, st1)),
            ("fdiv st1,st0", |a| a.fdiv_2(st1, st0)),
            ("fsubr st0,st1", |a| a.fsubr_2(st0, st1)),
            ("fxch", |a| a.fxch(st0, st1)),
            ("fucomip", |a| a.fucomip(st0, st1)),
        ];
        for (name, op) in ops {
            let code = asm(64, |a| {
                a.fld(qword_ptr(rdi))?;
                a.fld(qword_ptr(rdi + 8))?;
                op(a)?;
                a.fnstsw(word_ptr(rdi + 0x100))?;
                a.fstp(qword_ptr(rdi + 0x108))?;
                a.fnstsw(word_ptr(rdi + 0x102))?;
                a.fstp(qword_ptr(rdi + 0x110))
            });
            for &x in &VALUES {
                for &y in &VALUES {
                    check_fix(name, &code, &inputs(x, y), &no_pe(&[0x100, 0x102]));
                }
            }
        }
        let mem: [(&str, Gen); 10] = [
            ("fadd m64", |a| a.fadd(qword_ptr(rdi + 8))),
            ("fsub m64", |a| a.fsub(qword_ptr(rdi + 8))),
            ("fsubr m64", |a| a.fsubr(qword_ptr(rdi + 8))),
            ("fmul m32", |a| a.fmul(dword_ptr(rdi + 0x10))),
            ("fdiv m64", |a| a.fdiv(qword_ptr(rdi + 8))),
            ("fdivr m64", |a| a.fdivr(qword_ptr(rdi + 8))),
            ("fiadd m32", |a| a.fiadd(dword_ptr(rdi + 0x14))),
            ("fimul m16", |a| a.fimul(word_ptr(rdi + 0x18))),
            ("fcom m64", |a| a.fcom(qword_ptr(rdi + 8))),
            ("ficomp m32", |a| a.ficomp(dword_ptr(rdi + 0x14))),
        ];
        for (name, op) in mem {
            let code = asm(64, |a| {
                a.fld(qword_ptr(rdi))?;
                op(a)?;
                a.fnstsw(word_ptr(rdi + 0x100))?;
                a.fstp(qword_ptr(rdi + 0x108))
            });
            for &x in &VALUES {
                for &y in &VALUES {
                    let mut d = inputs(x, y);
                    d.put(0x10, &(y as f32).to_le_bytes()).put(0x14, &(y as i32).to_le_bytes());
                    d.put(0x18, &(y as i16).to_le_bytes());
                    check_fix(name, &code, &d, &no_pe(&[0x100]));
                }
            }
        }
    }

    #[test]
    fn x87_unary_and_compare_match_the_host() {
        type Gen = fn(&mut CodeAssembler) -> std::result::Result<(), IcedError>;
        let ops: [(&str, Gen); 8] = [
            ("fchs", |a| a.fchs()),
            ("fabs", |a| a.fabs()),
            ("fsqrt", |a| a.fsqrt()),
            ("ftst", |a| a.ftst()),
            ("fxam", |a| a.fxam()),
            ("frndint", |a| a.frndint()),
            ("fscale", |a| a.fscale()),
            ("fxtract", |a| {
                a.fxtract()?;
                a.fstp(qword_ptr(rdi + 0x118))
            }),
        ];
        let vals = [1.5, -2.25, 2.0, 9.0, 0.25, 0.0, -0.0, 2.5, -3.5, 1e10, f64::INFINITY, f64::NAN, -1.0];
        for (name, op) in ops {
            for rc in [0x37fu16, 0x77f, 0xb7f, 0xf7f] {
                let code = asm(64, |a| {
                    a.fldcw(word_ptr(rdi + 0x20))?;
                    a.fld(qword_ptr(rdi + 8))?;
                    a.fld(qword_ptr(rdi))?;
                    op(a)?;
                    a.fnstsw(word_ptr(rdi + 0x100))?;
                    a.fstp(qword_ptr(rdi + 0x108))?;
                    a.fstp(qword_ptr(rdi + 0x110))
                });
                for &x in &vals {
                    let mut d = inputs(x, 3.0);
                    d.put(0x20, &rc.to_le_bytes());
                    check_fix(name, &code, &d, &no_pe(&[0x100]));
                }
            }
        }
        // FXAM on an empty register; FCOMI flags; FCOMPP.
        let code = asm(64, |a| {
            a.fxam()?;
            a.fnstsw(word_ptr(rdi + 0x100))?;
            a.fld(qword_ptr(rdi + 8))?;
            a.fld(qword_ptr(rdi))?;
            a.fcomi(st0, st1)?;
            a.fcompp()?;
            a.fnstsw(word_ptr(rdi + 0x102))
        });
        for &x in &VALUES {
            for &y in &VALUES {
                check("fcomi/fcompp", &code, &inputs(x, y), &[]);
            }
        }
    }

    #[test]
    fn x87_loads_stores_and_integers_match_the_host() {
        let code = asm(64, |a| {
            a.fldcw(word_ptr(rdi + 0x20))?;
            for (i, off) in [0x100, 0x108, 0x110].into_iter().enumerate() {
                a.fld(qword_ptr(rdi))?;
                match i {
                    0 => a.fistp(dword_ptr(rdi + off))?,
                    1 => a.fistp(qword_ptr(rdi + off))?,
                    _ => a.fistp(word_ptr(rdi + off))?,
                }
            }
            a.fld(qword_ptr(rdi))?;
            a.fisttp(dword_ptr(rdi + 0x118))?;
            a.fld(qword_ptr(rdi))?;
            a.fist(word_ptr(rdi + 0x11c))?;
            a.fst(dword_ptr(rdi + 0x120))?;
            a.fstp(tword_ptr(rdi + 0x130))?;
            a.fld(tword_ptr(rdi + 0x130))?;
            a.fstp(qword_ptr(rdi + 0x140))?;
            a.fild(qword_ptr(rdi + 0x28))?;
            a.fst(qword_ptr(rdi + 0x148))?;
            a.fstp(dword_ptr(rdi + 0x150))?;
            a.fild(word_ptr(rdi + 0x28))?;
            a.fild(dword_ptr(rdi + 0x28))?;
            a.fstp(tword_ptr(rdi + 0x160))?;
            a.fstp(tword_ptr(rdi + 0x170))?;
            a.fldpi()?;
            a.fstp(tword_ptr(rdi + 0x180))?;
            a.fldl2t()?;
            a.fstp(tword_ptr(rdi + 0x190))?;
            a.fldlg2()?;
            a.fstp(tword_ptr(rdi + 0x1a0))?;
            a.fld(dword_ptr(rdi + 0x30))?;
            a.fstp(qword_ptr(rdi + 0x1b0))?;
            a.fnstsw(word_ptr(rdi + 0x1b8))
        });
        let vals = [
            2.5,
            -2.5,
            3.5,
            -0.5,
            0.49999999999999994,
            32767.5,
            -32768.4,
            1e10,
            -1e10,
            9.3e18,
            -((1u64 << 63) as f64),
            f64::NAN,
            f64::INFINITY,
            1.0 / 3.0,
            1e39,
            1e-40,
            -1e-300,
            0.0,
        ];
        for rc in [0x37fu16, 0x77f, 0xb7f, 0xf7f] {
            for (i, &x) in vals.iter().enumerate() {
                let mut d = inputs(x, 0.0);
                d.put(0x20, &rc.to_le_bytes());
                let int = [0x7fff_ffff_ffff_fff5u64, 0x8000_0000_0000_0001, 12345, 0x8000_0000_ffff_8001][i % 4];
                d.put(0x28, &int.to_le_bytes());
                d.put(0x30, &[0x7f800001u32, 0x00000001, 0x3eaaaaab, 0xff800000][i % 4].to_le_bytes());
                check("loads/stores", &code, &d, &[]);
            }
        }
        let _ = DATA;
    }
}
