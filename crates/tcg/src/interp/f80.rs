//! x87 arithmetic on 80-bit values in software: add, subtract, multiply, divide and
//! square root, exactly rounded to the precision control's 24, 53 or 64 bits with the
//! 15-bit exponent kept, in any rounding mode, with the exception flags and C1 (the
//! result was rounded up in magnitude) a guest can read. Integer arithmetic on u128
//! significands with 64 guard bits and a sticky bit; no host floating point, so the
//! results are the same on every host.
//!
//! The callers deal with NaN operands, unsupported encodings and the denormal-operand
//! flag (see `x87::arith`); these functions take any other values: zeros, denormals,
//! normals and infinities.

use super::x87::{F80, RC_DOWN, RC_NEAR, RC_UP};

/// Exception flags in FSW's bit order.
pub const IE: u16 = 1 << 0;
pub const ZE: u16 = 1 << 2;
pub const OE: u16 = 1 << 3;
pub const UE: u16 = 1 << 4;
pub const PE: u16 = 1 << 5;

/// A result: the value, the exception flags it raised and whether rounding increased
/// its magnitude (FSW.C1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rounded {
    pub v: F80,
    pub flags: u16,
    pub up: bool,
}

impl Rounded {
    fn exact(v: F80) -> Self {
        Rounded { v, flags: 0, up: false }
    }
    fn invalid() -> Self {
        Rounded { v: F80::INDEFINITE, flags: IE, up: false }
    }
}

/// The significand bits FCW's precision control keeps (00: 24, 10: 53, 11: 64; the
/// reserved 01 taken as 64).
pub fn precision(fcw: u16) -> u32 {
    match (fcw >> 8) & 3 {
        0 => 24,
        2 => 53,
        _ => 64,
    }
}

const BIAS: i32 = 16383;

fn inf(sign: bool) -> F80 {
    F80 { se: u16::from(sign) << 15 | 0x7fff, m: 1 << 63 }
}

fn zero(sign: bool) -> F80 {
    F80 { se: u16::from(sign) << 15, m: 0 }
}

/// A finite value as (sign, significand, exponent of the significand's bit 63): the
/// value is m × 2^(e − 63). Denormals and pseudo-denormals keep their unnormalized
/// significand with the smallest exponent.
fn unpack(x: F80) -> (bool, u64, i32) {
    let e = if x.exp() == 0 { 1 - BIAS } else { i32::from(x.exp()) - BIAS };
    (x.sign(), x.m, e)
}

/// Rounds sign × m × 2^(e − 127) to `p` significand bits in the 80-bit format (the
/// 15-bit exponent, denormals below it) with rounding mode `rc`. `m` may be anything
/// but zero; its bit 0 may be a sticky bit for everything below it.
fn round(sign: bool, m: u128, e: i32, p: u32, rc: u32) -> Rounded {
    debug_assert!(m != 0);
    let lz = m.leading_zeros() as i32;
    let m = m << lz;
    let e = e - lz;
    // The biased exponent of bit 127; below 1 the result is denormal (tiny).
    let be = e + BIAS;
    let round_at = |drop: u32| -> (u128, bool, bool) {
        // (kept bits, inexact, round up)
        let (q, rem, half) = if drop > 128 {
            (0u128, m, None)
        } else if drop == 128 {
            (0u128, m, Some(1u128 << 127))
        } else {
            (m >> drop, m & ((1u128 << drop) - 1), Some(1u128 << (drop - 1)))
        };
        let inexact = rem != 0;
        let up = match rc {
            RC_NEAR => half.is_some_and(|h| rem > h || (rem == h && q & 1 == 1)),
            RC_DOWN => sign && inexact,
            RC_UP => !sign && inexact,
            _ => false,
        };
        (q, inexact, up)
    };
    let drop = 128 - p;
    if be >= 1 {
        let (mut q, inexact, up) = round_at(drop);
        let mut be = be;
        q += u128::from(up);
        if q >> p != 0 {
            q >>= 1;
            be += 1;
        }
        if be >= 0x7fff {
            // Overflow: infinity or the largest finite value, by mode and sign.
            let to_inf = match rc {
                RC_NEAR => true,
                RC_DOWN => sign,
                RC_UP => !sign,
                _ => false,
            };
            let v =
                if to_inf { inf(sign) } else { F80 { se: u16::from(sign) << 15 | 0x7ffe, m: u64::MAX << (64 - p) } };
            return Rounded { v, flags: OE | PE, up: to_inf };
        }
        let v = F80 { se: u16::from(sign) << 15 | be as u16, m: (q as u64) << (64 - p) };
        return Rounded { v, flags: if inexact { PE } else { 0 }, up };
    }
    // Tiny: the significand loses (1 − be) more bits to the denormal format.
    let extra = (1 - be) as u32;
    let (mut q, inexact, up) = round_at(drop.saturating_add(extra));
    q += u128::from(up);
    // In the 64-bit significand frame: bit 63 set after rounding means the smallest
    // normal (exponent field 1).
    let m64 = (q as u64) << (64 - p);
    let se = u16::from(sign) << 15 | u16::from(m64 >> 63 == 1);
    let mut flags = 0;
    if inexact {
        flags |= PE;
        // Tininess after rounding (with an unbounded exponent), as x86 detects it: a
        // value that rounds up to the smallest normal at full precision is not tiny.
        let (q0, _, up0) = round_at(drop);
        if !(be == 0 && q0 + u128::from(up0) == 1u128 << p) {
            flags |= UE;
        }
    }
    Rounded { v: F80 { se, m: m64 }, flags, up }
}

/// a + b (`negate_b`: a − b).
pub fn add(a: F80, b: F80, negate_b: bool, p: u32, rc: u32) -> Rounded {
    let b = if negate_b { b.negate() } else { b };
    match (a.is_inf(), b.is_inf()) {
        (true, true) if a.sign() != b.sign() => return Rounded::invalid(),
        (true, _) => return Rounded::exact(a),
        (_, true) => return Rounded::exact(b),
        _ => {}
    }
    let (sa, ma, ea) = unpack(a);
    let (sb, mb, eb) = unpack(b);
    if ma == 0 && mb == 0 {
        // Zeros: the sign of both when they agree, else +0 (−0 rounding down).
        let s = if sa == sb { sa } else { rc == RC_DOWN };
        return Rounded::exact(zero(s));
    }
    // Both in the frame value = M × 2^(e − 127), the smaller shifted right with a
    // sticky bit.
    let (mut big, mut small) = ((sa, u128::from(ma) << 64, ea), (sb, u128::from(mb) << 64, eb));
    if mb != 0 && (ma == 0 || eb > ea || (eb == ea && mb > ma)) {
        std::mem::swap(&mut big, &mut small);
    }
    let (s, mut m, e) = big;
    let shift = (e - small.2) as u32;
    let mut sm = if small.1 == 0 {
        0
    } else if shift >= 127 {
        1
    } else {
        let lost = small.1 & ((1u128 << shift) - 1) != 0;
        (small.1 >> shift) | u128::from(lost)
    };
    let mut e = e;
    if s == small.0 {
        // Make room for the carry: one bit right, sticky kept.
        let sticky = (m | sm) & 1;
        m >>= 1;
        sm >>= 1;
        m = (m + sm) | sticky;
        e += 1;
    } else {
        m -= sm;
        if m == 0 {
            return Rounded::exact(zero(rc == RC_DOWN));
        }
    }
    round(s, m, e, p, rc)
}

/// a × b.
pub fn mul(a: F80, b: F80, p: u32, rc: u32) -> Rounded {
    let s = a.sign() != b.sign();
    if a.is_inf() || b.is_inf() {
        return if a.is_zero() || b.is_zero() { Rounded::invalid() } else { Rounded::exact(inf(s)) };
    }
    let (_, ma, ea) = unpack(a);
    let (_, mb, eb) = unpack(b);
    if ma == 0 || mb == 0 {
        return Rounded::exact(zero(s));
    }
    // ma × 2^(ea − 63) × mb × 2^(eb − 63) = P × 2^(ea + eb + 1 − 127).
    round(s, u128::from(ma) * u128::from(mb), ea + eb + 1, p, rc)
}

/// a ÷ b.
pub fn div(a: F80, b: F80, p: u32, rc: u32) -> Rounded {
    let s = a.sign() != b.sign();
    match (a.is_inf(), b.is_inf()) {
        (true, true) => return Rounded::invalid(),
        (true, false) => return Rounded::exact(inf(s)),
        (false, true) => return Rounded::exact(zero(s)),
        _ => {}
    }
    let (_, ma, ea) = unpack(a);
    let (_, mb, eb) = unpack(b);
    match (ma == 0, mb == 0) {
        (true, true) => return Rounded::invalid(),
        (false, true) => return Rounded { v: inf(s), flags: ZE, up: false },
        (true, false) => return Rounded::exact(zero(s)),
        _ => {}
    }
    // Normalized, the quotient is in (1/2, 2): 64 + 62 bits of it and a sticky bit.
    let (la, lb) = (ma.leading_zeros(), mb.leading_zeros());
    let (ma, ea) = (ma << la, ea - la as i32);
    let (mb, eb) = (mb << lb, eb - lb as i32);
    let n = u128::from(ma) << 64;
    let (q1, r1) = (n / u128::from(mb), n % u128::from(mb));
    let n2 = r1 << 64;
    let (q2, r2) = (n2 / u128::from(mb), n2 % u128::from(mb));
    let m = q1 << 62 | q2 >> 2 | u128::from(q2 & 3 != 0 || r2 != 0);
    // m ≈ (ma / mb) × 2^126, and a ÷ b = (ma / mb) × 2^(ea − eb).
    round(s, m, ea - eb + 1, p, rc)
}

/// √a.
pub fn sqrt(a: F80, p: u32, rc: u32) -> Rounded {
    if a.is_zero() {
        return Rounded::exact(a);
    }
    if a.sign() {
        return Rounded::invalid();
    }
    if a.is_inf() {
        return Rounded::exact(a);
    }
    let (_, m, e) = unpack(a);
    let lz = m.leading_zeros();
    let (m, e) = (m << lz, e - lz as i32);
    // a = m × 2^(e − 63) = x × 2^k with x = m × 2^64 or 2^63 so that k is even.
    let (x, k) =
        if (e - 127).rem_euclid(2) == 0 { (u128::from(m) << 64, e - 127) } else { (u128::from(m) << 63, e - 126) };
    let r = isqrt(x);
    let rem = x - r * r;
    // √x = r + f with 0 ≤ f < 1; f ≥ 1/2 exactly when rem > r (f = 1/2 is impossible).
    let m = r << 2 | u128::from(rem > r) << 1 | u128::from(rem != 0);
    // √a = (m / 4) × 2^(k / 2) = m × 2^(k/2 − 2 + 127 − 127).
    round(false, m, k / 2 - 2 + 127, p, rc)
}

/// ⌊√x⌋.
fn isqrt(x: u128) -> u128 {
    if x == 0 {
        return 0;
    }
    // A float estimate, one Newton step in integers, then exact correction.
    let mut r = (x as f64).sqrt() as u128;
    if r > 0 {
        r = (r + x / r) / 2;
    }
    while r.checked_mul(r).is_none_or(|sq| sq > x) {
        r -= 1;
    }
    while (r + 1).checked_mul(r + 1).is_some_and(|sq| sq <= x) {
        r += 1;
    }
    r
}

#[cfg(test)]
// The comparisons with the host CPU run on x86-64 hosts only.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports, dead_code))]
mod tests {
    use super::*;
    use crate::interp::x87::RC_ZERO;

    #[cfg(target_arch = "x86_64")]
    /// Runs `insn` on the host x87 with ST0 = a, ST1 = b and control word `fcw`
    /// (exceptions masked); returns the 80-bit ST0 and the status word.
    fn host(insn: &str, fcw: u16, a: F80, b: F80) -> (F80, u16) {
        let (ab, bb) = (a.to_bytes(), b.to_bytes());
        let mut out = [0u8; 10];
        let mut fsw: u16 = 0;
        let mut saved: u16 = 0;
        let fcw = fcw | 0x3f;
        macro_rules! run {
            ($op:literal) => {
                // SAFETY: the x87 stack is left as found (two loads, two pops); the
                // control word is restored.
                unsafe {
                    std::arch::asm!(
                        "fnstcw [{saved}]",
                        "fldcw [{fcw}]",
                        "fnclex",
                        "fld tbyte ptr [{b}]",
                        "fld tbyte ptr [{a}]",
                        $op,
                        "fnstsw [{fsw}]",
                        "fstp tbyte ptr [{out}]",
                        "fstp st(0)",
                        "fnclex",
                        "fldcw [{saved}]",
                        saved = in(reg) &mut saved,
                        fcw = in(reg) &fcw,
                        a = in(reg) ab.as_ptr(),
                        b = in(reg) bb.as_ptr(),
                        out = in(reg) out.as_mut_ptr(),
                        fsw = in(reg) &mut fsw,
                        out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
                        out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
                    )
                }
            };
        }
        match insn {
            "fadd" => run!("fadd st(0), st(1)"),
            "fsub" => run!("fsub st(0), st(1)"),
            "fmul" => run!("fmul st(0), st(1)"),
            "fdiv" => run!("fdiv st(0), st(1)"),
            "fsqrt" => run!("fsqrt"),
            _ => unreachable!(),
        }
        (F80::from_bytes(&out), fsw)
    }

    const fn f(se: u16, m: u64) -> F80 {
        F80 { se, m }
    }

    fn values() -> Vec<F80> {
        let mut v = vec![
            F80::ZERO,
            F80::ZERO.negate(),
            F80::ONE,
            F80::ONE.negate(),
            f(0x3fff, 0xc000_0000_0000_0000), // 1.5
            f(0x4000, 0x8000_0000_0000_0001),
            f(0x3ffe, u64::MAX),
            f(0x3fff, u64::MAX),
            f(0x7ffe, u64::MAX),              // largest finite
            f(0xfffe, 0x8000_0000_0000_0000), // huge negative
            f(0x0001, 0x8000_0000_0000_0000), // smallest normal
            f(0x0000, 0x0000_0000_0000_0001), // smallest denormal
            f(0x8000, 0x4000_0000_0000_0000), // negative denormal
            f(0x0000, 0x7fff_ffff_ffff_ffff),
            f(0x7fff, 0x8000_0000_0000_0000), // +inf
            f(0xffff, 0x8000_0000_0000_0000), // -inf
            f(0x3ffd, 0xaaaa_aaaa_aaaa_aaab), // 1/3
            f(0x4002, 0xa000_0000_0000_0000), // 10
            f(0xc01f, 0xd555_5555_5555_5555),
            f(0x3f80, 0x8000_0000_0000_0fff),
            f(0x0040, 0x9234_5678_9abc_def1),
            f(0x7fc0, 0xffff_ffff_0000_0001),
        ];
        // Pseudo-random normals of all magnitudes.
        let mut s = 0x1234_5678_9abc_def1u64;
        for _ in 0..40 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let e = (s >> 48) as u16 % 0x7ffe + 1;
            v.push(f(e | (s as u16 & 0x8000), (s | 1 << 63).rotate_left(7) | 1 << 63));
        }
        v
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn arithmetic_matches_the_host_x87() {
        let vals = values();
        let mut checked = 0;
        for pc in [0u16, 2, 3] {
            for rc in [RC_NEAR, RC_DOWN, RC_UP, RC_ZERO] {
                let fcw = (pc << 8) | (rc as u16) << 10;
                let p = precision(fcw);
                for &a in &vals {
                    for &b in &vals {
                        for insn in ["fadd", "fsub", "fmul", "fdiv", "fsqrt"] {
                            if insn == "fsqrt" && b != vals[0] {
                                continue;
                            }
                            let got = match insn {
                                "fadd" => add(a, b, false, p, rc),
                                "fsub" => add(a, b, true, p, rc),
                                "fmul" => mul(a, b, p, rc),
                                "fdiv" => div(a, b, p, rc),
                                _ => sqrt(a, p, rc),
                            };
                            let (want, fsw) = host(insn, fcw, a, b);
                            // DE (denormal operand) is the caller's.
                            let want_flags = fsw & (IE | ZE | OE | UE | PE);
                            let want_up = fsw & (1 << 9) != 0;
                            assert_eq!(
                                (got.v, got.flags, got.up),
                                (want, want_flags, want_up),
                                "{insn} {a:x?} {b:x?} pc {pc} rc {rc}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 50_000, "{checked}");
    }
}
