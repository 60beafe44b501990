//! SSE and SSE2 (the CPUID leaf 1 set; SSE3 and later stay #UD), plus the MMX-register
//! forms of the integer instructions: moves (MOVAPS..MOVDQU, MOVD/MOVQ, MOVSS/MOVSD,
//! MOVH/LPS/PD, MOVLHPS/MOVHLPS, non-temporal stores, MASKMOVDQU), logic, integer
//! arithmetic, compares, shifts, shuffles, packs and unpacks, floating-point
//! arithmetic, compares and conversions, LDMXCSR/STMXCSR.
//!
//! Checks: CR0.EM or a clear CR4.OSFXSR is #UD, CR0.TS #NM (MMX forms: EM #UD, TS
//! #NM); 16-byte memory operands must be aligned (#GP(0)) except for MOVUPS, MOVUPD
//! and MOVDQU.
//!
//! Floating point follows MXCSR: rounding control, DAZ and FTZ, and the sticky flags
//! (IE, DE, ZE, OE, UE, PE). Results are computed in f64 with error-free
//! transformations, so every rounding mode is exact and the round-to-nearest results
//! are bit-identical to the hardware's, NaN propagation included (the first source's
//! NaN wins, quieted; invalid operations give the default NaN). An unmasked exception
//! leaves the destination unchanged and raises #XM (#UD without CR4.OSXMMEXCPT).
//! RCPPS/RSQRTPS and their scalar forms return the exact quotient rounded to single
//! precision (within the hardware's error bound, not its bits).

use iced_x86::{Code, Instruction, Mnemonic, OpKind};
use quern_core::regs::ctrl::{CR4_OSFXSR, CR4_OSXMMEXCPT};
use quern_core::regs::flags::{AF, CF, OF, PF, SF, ZF};

use super::x87::{
    op_f64, round_bin, FOp, CR0_EM, CR0_TS, F_DE, F_IE, F_OE, F_PE, F_UE, F_ZE, MXCSR_MASK, RC_DOWN, RC_NEAR, RC_ZERO,
};
use super::{addr_mask, address_size_of, read_reg, write_reg, Operands, Step};
use crate::cpu::{vector, Cpu, Exception, Result};
use crate::translate::seg_index;

type V = [u8; 16];

/// A lane type of a 128-bit vector (little-endian lanes).
trait Lane: Copy {
    const N: usize;
    fn get(v: &V, i: usize) -> Self;
    fn put(v: &mut V, i: usize, x: Self);
}

macro_rules! lane {
    ($($t:ty),*) => {$(
        impl Lane for $t {
            const N: usize = 16 / std::mem::size_of::<$t>();
            fn get(v: &V, i: usize) -> Self {
                const S: usize = std::mem::size_of::<$t>();
                <$t>::from_le_bytes(v[i * S..(i + 1) * S].try_into().unwrap())
            }
            fn put(v: &mut V, i: usize, x: Self) {
                const S: usize = std::mem::size_of::<$t>();
                v[i * S..(i + 1) * S].copy_from_slice(&x.to_le_bytes());
            }
        }
    )*};
}
lane!(u8, u16, u32, u64, i8, i16, i32, i64);

fn zip<T: Lane>(a: &V, b: &V, f: impl Fn(T, T) -> T) -> V {
    let mut r = [0; 16];
    for i in 0..T::N {
        T::put(&mut r, i, f(T::get(a, i), T::get(b, i)));
    }
    r
}

fn map<T: Lane>(a: &V, f: impl Fn(T) -> T) -> V {
    let mut r = [0; 16];
    for i in 0..T::N {
        T::put(&mut r, i, f(T::get(a, i)));
    }
    r
}

fn q(v: &V, i: usize) -> u64 {
    u64::get(v, i)
}

fn from_q(lo: u64, hi: u64) -> V {
    let mut r = [0; 16];
    u64::put(&mut r, 0, lo);
    u64::put(&mut r, 1, hi);
    r
}

/// Instructions whose 16-byte memory operand may be unaligned.
fn unaligned_ok(m: Mnemonic) -> bool {
    matches!(m, Mnemonic::Movups | Mnemonic::Movupd | Mnemonic::Movdqu | Mnemonic::Maskmovdqu)
}

/// Operand access for one instruction: XMM (16 bytes) and MM (8 bytes) registers,
/// general registers and memory as vectors.
struct Ctx<'a> {
    cpu: &'a mut Cpu,
    ins: &'a Instruction,
    /// The vector width in bytes: 8 for MMX forms, else 16.
    w: usize,
}

impl Ctx<'_> {
    fn linear(&mut self, n: usize) -> Result<u64> {
        let a = Operands { cpu: self.cpu, ins: self.ins }.linear();
        if n == 16 && a & 15 != 0 && !unaligned_ok(self.ins.mnemonic()) {
            return Err(Exception::gp0());
        }
        Ok(a)
    }

    fn mem_size(&self) -> usize {
        self.ins.memory_size().size()
    }

    /// Operand `i` as a vector (zero-extended).
    fn get(&mut self, i: u32) -> Result<V> {
        let mut v = [0; 16];
        match self.ins.op_kind(i) {
            OpKind::Register => {
                let r = self.ins.op_register(i);
                if r.is_xmm() {
                    v = self.cpu.state.fpu.xmm[r.number()];
                } else if r.is_mm() {
                    v[..8].copy_from_slice(&self.cpu.state.fpu.st[r.number()][..8]);
                } else {
                    v[..8].copy_from_slice(&read_reg(self.cpu, r).to_le_bytes());
                }
            }
            OpKind::Memory => {
                let n = self.mem_size();
                let a = self.linear(n)?;
                self.cpu.read(a, &mut v[..n])?;
            }
            _ => v[0] = self.ins.immediate(i) as u8,
        }
        Ok(v)
    }

    /// Writes operand `i`: a whole XMM or MM register, a general register (zero-extended
    /// to 64 bits for 32-bit ones), or the memory operand's size.
    fn set(&mut self, i: u32, v: V) -> Result<()> {
        match self.ins.op_kind(i) {
            OpKind::Register => {
                let r = self.ins.op_register(i);
                if r.is_xmm() {
                    self.cpu.state.fpu.xmm[r.number()] = v;
                } else if r.is_mm() {
                    let st = &mut self.cpu.state.fpu.st[r.number()];
                    st[..8].copy_from_slice(&v[..8]);
                    st[8] = 0xff;
                    st[9] = 0xff;
                } else {
                    write_reg(self.cpu, r, q(&v, 0));
                }
                Ok(())
            }
            OpKind::Memory => {
                let n = self.mem_size();
                let a = self.linear(n)?;
                self.cpu.write(a, &v[..n])
            }
            _ => Err(Exception::ud()),
        }
    }

    fn imm(&self) -> u8 {
        self.ins.immediate(self.ins.op_count() - 1) as u8
    }
}

/// Which register file an instruction uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sse,
    Mmx,
}

fn kind(ins: &Instruction) -> Option<Kind> {
    let mut k = None;
    for i in 0..ins.op_count() {
        if ins.op_kind(i) == OpKind::Register {
            let r = ins.op_register(i);
            if r.is_mm() {
                return Some(Kind::Mmx);
            }
            if r.is_xmm() {
                k = Some(Kind::Sse);
            }
        }
    }
    if ins.encoding() != iced_x86::EncodingKind::Legacy {
        return None; // VEX/EVEX: #UD (no AVX)
    }
    // Float → integer conversions from memory name no vector register.
    if k.is_none()
        && matches!(ins.mnemonic(), Mnemonic::Cvtss2si | Mnemonic::Cvttss2si | Mnemonic::Cvtsd2si | Mnemonic::Cvttsd2si)
    {
        return Some(Kind::Sse);
    }
    k
}

/// MMX instructions move TOP to 0 and tag every register valid (MMi is physical
/// register Ri, where the state keeps it).
fn enter_mmx(cpu: &mut Cpu) {
    let f = &mut cpu.state.fpu;
    f.fsw &= !(7 << 11);
    f.ftw = 0xff;
}

/// Whether `ins` is an SSE/SSE2 or MMX instruction (`exec` returns `Some` or an error
/// for it).
pub fn handles(ins: &Instruction) -> bool {
    use Mnemonic::*;
    matches!(ins.mnemonic(), Movnti | Ldmxcsr | Stmxcsr) || kind(ins).is_some()
}

/// Runs `ins` if it is an SSE/SSE2 instruction (or an MMX form of one).
pub fn exec(cpu: &mut Cpu, ins: &Instruction) -> Result<Option<Step>> {
    use Mnemonic::*;
    let m = ins.mnemonic();
    if m == Movnti {
        let mut o = Operands { cpu, ins };
        let v = o.read(1)?;
        o.write(0, v)?;
        return Ok(Some(Step::Next));
    }
    let k = match m {
        Ldmxcsr | Stmxcsr => Kind::Sse,
        _ => match kind(ins) {
            Some(k) => k,
            None => return Ok(None),
        },
    };
    let cr0 = cpu.state.cr0;
    if cr0 & CR0_EM != 0 || (k == Kind::Sse && cpu.state.cr4 & CR4_OSFXSR == 0) {
        return Err(Exception::ud());
    }
    if cr0 & CR0_TS != 0 {
        return Err(Exception::new(vector::NM));
    }
    let w = if k == Kind::Mmx { 8 } else { 16 };
    let mut c = Ctx { cpu, ins, w };
    let done = if k == Kind::Mmx {
        enter_mmx(c.cpu);
        integer(&mut c)?
    } else {
        integer(&mut c)? || moves(&mut c)? || float(&mut c)?
    };
    if !done {
        log::debug!("tcg sse: #UD for unimplemented {:?} at {:#x}", ins.code(), ins.ip());
        return Err(Exception::ud());
    }
    Ok(Some(Step::Next))
}

// ---- Integer ----

fn sat_i8(x: i16) -> i8 {
    x.clamp(-128, 127) as i8
}
fn sat_u8(x: i16) -> u8 {
    x.clamp(0, 255) as u8
}
fn sat_i16(x: i32) -> i16 {
    x.clamp(-32768, 32767) as i16
}

/// Interleaves the `s`-byte elements of the low (`hi` false) or high halves.
fn unpack(a: &V, b: &V, s: usize, hi: bool) -> V {
    let mut r = [0; 16];
    let base = if hi { 8 } else { 0 };
    for k in 0..8 / s {
        let src = base + k * s;
        r[2 * k * s..2 * k * s + s].copy_from_slice(&a[src..src + s]);
        r[(2 * k + 1) * s..(2 * k + 2) * s].copy_from_slice(&b[src..src + s]);
    }
    r
}

/// Shift counts above the lane width give 0 (logical) or the sign (arithmetic).
fn shift<T: Lane>(a: &V, count: u64, f: impl Fn(T, u32) -> T, bits: u64, arith: bool) -> V {
    let c = if count >= bits {
        if !arith {
            return [0; 16];
        }
        bits - 1
    } else {
        count
    };
    map::<T>(a, |x| f(x, c as u32))
}

/// The integer instructions (SSE2 on XMM, MMX/SSE on MM); false if not one.
fn integer(c: &mut Ctx) -> Result<bool> {
    use Mnemonic::*;
    let m = c.ins.mnemonic();
    let w = c.w;
    // Two-operand "dst = dst op src" forms first.
    let binary = matches!(
        m,
        Pxor | Por
            | Pand
            | Pandn
            | Pcmpeqb
            | Pcmpeqw
            | Pcmpeqd
            | Pcmpgtb
            | Pcmpgtw
            | Pcmpgtd
            | Pminub
            | Pmaxub
            | Pminsw
            | Pmaxsw
            | Paddb
            | Paddw
            | Paddd
            | Paddq
            | Psubb
            | Psubw
            | Psubd
            | Psubq
            | Paddusb
            | Paddusw
            | Psubusb
            | Psubusw
            | Paddsb
            | Paddsw
            | Psubsb
            | Psubsw
            | Psadbw
            | Punpcklbw
            | Punpcklwd
            | Punpckldq
            | Punpcklqdq
            | Punpckhbw
            | Punpckhwd
            | Punpckhdq
            | Punpckhqdq
            | Packuswb
            | Packsswb
            | Packssdw
            | Pmullw
            | Pmulhw
            | Pmulhuw
            | Pmuludq
            | Pmaddwd
            | Pavgb
            | Pavgw
    ) || (matches!(m, Psllw | Pslld | Psllq | Psrlw | Psrld | Psrlq | Psraw | Psrad)
        && c.ins.op1_kind() != OpKind::Immediate8);
    if binary {
        let a = c.get(0)?;
        let b = c.get(1)?;
        let r = match m {
            Pxor => zip::<u64>(&a, &b, |x, y| x ^ y),
            Por => zip::<u64>(&a, &b, |x, y| x | y),
            Pand => zip::<u64>(&a, &b, |x, y| x & y),
            Pandn => zip::<u64>(&a, &b, |x, y| !x & y),
            Pcmpeqb => zip::<u8>(&a, &b, |x, y| if x == y { !0 } else { 0 }),
            Pcmpeqw => zip::<u16>(&a, &b, |x, y| if x == y { !0 } else { 0 }),
            Pcmpeqd => zip::<u32>(&a, &b, |x, y| if x == y { !0 } else { 0 }),
            Pcmpgtb => zip::<i8>(&a, &b, |x, y| if x > y { -1 } else { 0 }),
            Pcmpgtw => zip::<i16>(&a, &b, |x, y| if x > y { -1 } else { 0 }),
            Pcmpgtd => zip::<i32>(&a, &b, |x, y| if x > y { -1 } else { 0 }),
            Pminub => zip::<u8>(&a, &b, |x, y| x.min(y)),
            Pmaxub => zip::<u8>(&a, &b, |x, y| x.max(y)),
            Pminsw => zip::<i16>(&a, &b, |x, y| x.min(y)),
            Pmaxsw => zip::<i16>(&a, &b, |x, y| x.max(y)),
            Paddb => zip::<u8>(&a, &b, |x, y| x.wrapping_add(y)),
            Paddw => zip::<u16>(&a, &b, |x, y| x.wrapping_add(y)),
            Paddd => zip::<u32>(&a, &b, |x, y| x.wrapping_add(y)),
            Paddq => zip::<u64>(&a, &b, |x, y| x.wrapping_add(y)),
            Psubb => zip::<u8>(&a, &b, |x, y| x.wrapping_sub(y)),
            Psubw => zip::<u16>(&a, &b, |x, y| x.wrapping_sub(y)),
            Psubd => zip::<u32>(&a, &b, |x, y| x.wrapping_sub(y)),
            Psubq => zip::<u64>(&a, &b, |x, y| x.wrapping_sub(y)),
            Paddusb => zip::<u8>(&a, &b, |x, y| x.saturating_add(y)),
            Paddusw => zip::<u16>(&a, &b, |x, y| x.saturating_add(y)),
            Psubusb => zip::<u8>(&a, &b, |x, y| x.saturating_sub(y)),
            Psubusw => zip::<u16>(&a, &b, |x, y| x.saturating_sub(y)),
            Paddsb => zip::<i8>(&a, &b, |x, y| x.saturating_add(y)),
            Paddsw => zip::<i16>(&a, &b, |x, y| x.saturating_add(y)),
            Psubsb => zip::<i8>(&a, &b, |x, y| x.saturating_sub(y)),
            Psubsw => zip::<i16>(&a, &b, |x, y| x.saturating_sub(y)),
            Psadbw => {
                let sad = |h: usize| (0..8).map(|i| u64::from(a[h + i].abs_diff(b[h + i]))).sum::<u64>();
                from_q(sad(0), if w == 16 { sad(8) } else { 0 })
            }
            Punpcklbw | Punpcklwd | Punpckldq | Punpcklqdq | Punpckhbw | Punpckhwd | Punpckhdq | Punpckhqdq => {
                let s = match m {
                    Punpcklbw | Punpckhbw => 1,
                    Punpcklwd | Punpckhwd => 2,
                    Punpckldq | Punpckhdq => 4,
                    _ => 8,
                };
                let hi = matches!(m, Punpckhbw | Punpckhwd | Punpckhdq | Punpckhqdq);
                if w == 8 {
                    // MMX: the halves of the 8-byte registers.
                    let (mut a2, mut b2) = (a, b);
                    if hi {
                        a2 = from_q(q(&a, 0) >> 32, 0);
                        b2 = from_q(q(&b, 0) >> 32, 0);
                    }
                    unpack(&a2, &b2, s, false)
                } else {
                    unpack(&a, &b, s, hi)
                }
            }
            Packuswb | Packsswb | Packssdw => {
                // MMX: pack [a | b] as one 16-byte source.
                let (a, b) = if w == 8 { (from_q(q(&a, 0), q(&b, 0)), [0; 16]) } else { (a, b) };
                let mut r = [0; 16];
                if m == Packssdw {
                    for i in 0..4 {
                        i16::put(&mut r, i, sat_i16(i32::get(&a, i)));
                        i16::put(&mut r, i + 4, sat_i16(i32::get(&b, i)));
                    }
                } else {
                    for i in 0..8 {
                        let (x, y) = (i16::get(&a, i), i16::get(&b, i));
                        if m == Packsswb {
                            r[i] = sat_i8(x) as u8;
                            r[i + 8] = sat_i8(y) as u8;
                        } else {
                            r[i] = sat_u8(x);
                            r[i + 8] = sat_u8(y);
                        }
                    }
                }
                r
            }
            Pmullw => zip::<u16>(&a, &b, |x, y| x.wrapping_mul(y)),
            Pmulhw => zip::<i16>(&a, &b, |x, y| ((i32::from(x) * i32::from(y)) >> 16) as i16),
            Pmulhuw => zip::<u16>(&a, &b, |x, y| ((u32::from(x) * u32::from(y)) >> 16) as u16),
            Pmuludq => zip::<u64>(&a, &b, |x, y| (x & 0xffff_ffff) * (y & 0xffff_ffff)),
            Pmaddwd => {
                let mut r = [0; 16];
                for i in 0..4 {
                    let p = |j: usize| i32::from(i16::get(&a, j)) * i32::from(i16::get(&b, j));
                    i32::put(&mut r, i, p(2 * i).wrapping_add(p(2 * i + 1)));
                }
                r
            }
            Pavgb => zip::<u8>(&a, &b, |x, y| ((u16::from(x) + u16::from(y) + 1) >> 1) as u8),
            Pavgw => zip::<u16>(&a, &b, |x, y| ((u32::from(x) + u32::from(y) + 1) >> 1) as u16),
            // Shifts by a vector count (its low 64 bits).
            _ => shifts(m, &a, q(&b, 0)),
        };
        c.set(0, r)?;
        return Ok(true);
    }
    match m {
        Psllw | Pslld | Psllq | Psrlw | Psrld | Psrlq | Psraw | Psrad => {
            let a = c.get(0)?;
            let r = shifts(m, &a, u64::from(c.imm()));
            c.set(0, r)?;
        }
        Pslldq | Psrldq => {
            let a = c.get(0)?;
            let n = usize::from(c.imm()).min(16);
            let mut r = [0; 16];
            if m == Pslldq {
                r[n..].copy_from_slice(&a[..16 - n]);
            } else {
                r[..16 - n].copy_from_slice(&a[n..]);
            }
            c.set(0, r)?;
        }
        Pshufd | Pshuflw | Pshufhw | Pshufw => {
            let b = c.get(1)?;
            let imm = c.imm();
            let sel = |i: usize| usize::from(imm >> (2 * i)) & 3;
            let mut r = b;
            match m {
                Pshufd => (0..4).for_each(|i| u32::put(&mut r, i, u32::get(&b, sel(i)))),
                Pshuflw | Pshufw => (0..4).for_each(|i| u16::put(&mut r, i, u16::get(&b, sel(i)))),
                _ => (0..4).for_each(|i| u16::put(&mut r, 4 + i, u16::get(&b, 4 + sel(i)))),
            }
            c.set(0, r)?;
        }
        Pmovmskb => {
            let b = c.get(1)?;
            let mask = (0..w).fold(0u64, |acc, i| acc | u64::from(b[i] >> 7) << i);
            write_reg(c.cpu, c.ins.op0_register(), mask);
        }
        Pextrw => {
            let b = c.get(1)?;
            let i = usize::from(c.imm()) & (w / 2 - 1);
            write_reg(c.cpu, c.ins.op0_register(), u64::from(u16::get(&b, i)));
        }
        Pinsrw => {
            let mut a = c.get(0)?;
            let v = c.get(1)?;
            let i = usize::from(c.imm()) & (w / 2 - 1);
            u16::put(&mut a, i, u16::get(&v, 0));
            c.set(0, a)?;
        }
        Movd | Movq => movd(c)?,
        Maskmovdqu | Maskmovq => {
            let v = c.get(1)?;
            let mask = c.get(2)?;
            let bits = address_size_of(c.ins, c.cpu.state.code_bits());
            let off = c.cpu.state.gpr[7] & addr_mask(bits);
            let o = Operands { cpu: c.cpu, ins: c.ins };
            let base = o.seg_linear(seg_index(c.ins.memory_segment()), off);
            for i in 0..w {
                if mask[i] & 0x80 != 0 {
                    c.cpu.write(c.cpu.wrap_linear(base.wrapping_add(i as u64)), &v[i..i + 1])?;
                }
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn shifts(m: Mnemonic, a: &V, n: u64) -> V {
    use Mnemonic::*;
    match m {
        Psllw => shift::<u16>(a, n, |x, c| x << c, 16, false),
        Pslld => shift::<u32>(a, n, |x, c| x << c, 32, false),
        Psllq => shift::<u64>(a, n, |x, c| x << c, 64, false),
        Psrlw => shift::<u16>(a, n, |x, c| x >> c, 16, false),
        Psrld => shift::<u32>(a, n, |x, c| x >> c, 32, false),
        Psrlq => shift::<u64>(a, n, |x, c| x >> c, 64, false),
        Psraw => shift::<i16>(a, n, |x, c| x >> c, 16, true),
        _ => shift::<i32>(a, n, |x, c| x >> c, 32, true),
    }
}

/// MOVD/MOVQ between XMM/MM registers, general registers and memory.
fn movd(c: &mut Ctx) -> Result<()> {
    let to_vec = c.ins.op0_kind() == OpKind::Register && {
        let r = c.ins.op0_register();
        r.is_xmm() || r.is_mm()
    };
    // The width moved: the general register's or memory's, 8 between vector registers.
    let n = if to_vec { width_of(c, 1) } else { width_of(c, 0) };
    let v = c.get(1)?;
    let mut r = [0; 16];
    r[..n].copy_from_slice(&v[..n]);
    c.set(0, r)
}

fn width_of(c: &Ctx, i: u32) -> usize {
    match c.ins.op_kind(i) {
        OpKind::Memory => c.mem_size(),
        _ => {
            let r = c.ins.op_register(i);
            if r.is_xmm() || r.is_mm() {
                8
            } else {
                r.size()
            }
        }
    }
}

// ---- Moves ----

fn moves(c: &mut Ctx) -> Result<bool> {
    use Mnemonic::*;
    let ins = c.ins;
    let m = ins.mnemonic();
    let reg0 = ins.op0_kind() == OpKind::Register;
    let reg1 = ins.op_count() > 1 && ins.op1_kind() == OpKind::Register;
    match m {
        Movaps | Movups | Movapd | Movupd | Movdqa | Movdqu | Movntps | Movntpd | Movntdq => {
            let v = c.get(1)?;
            c.set(0, v)?;
        }
        Movss | Movsd => {
            // (MOVSD the string instruction never gets here: it has no XMM operand.)
            let n = if m == Movss { 4 } else { 8 };
            let v = c.get(1)?;
            if reg0 && reg1 {
                let mut a = c.get(0)?;
                a[..n].copy_from_slice(&v[..n]);
                c.set(0, a)?;
            } else {
                // Loads zero the rest; stores write the low element.
                let mut r = [0; 16];
                r[..n].copy_from_slice(&v[..n]);
                c.set(0, r)?;
            }
        }
        Movhps | Movhpd | Movlps | Movlpd | Movlhps | Movhlps => {
            let hi = matches!(m, Movhps | Movhpd);
            if !reg0 {
                let v = c.get(1)?;
                let mut r = [0; 16];
                r[..8].copy_from_slice(if hi { &v[8..] } else { &v[..8] });
                c.set(0, r)?;
            } else {
                let mut a = c.get(0)?;
                let v = c.get(1)?;
                match m {
                    Movhps | Movhpd | Movlhps => a[8..].copy_from_slice(&v[..8]),
                    Movhlps => a[..8].copy_from_slice(&v[8..]),
                    _ => a[..8].copy_from_slice(&v[..8]),
                }
                c.set(0, a)?;
            }
        }
        Movmskps | Movmskpd => {
            let v = c.get(1)?;
            let mask = if m == Movmskps {
                (0..4).fold(0u64, |a, i| a | u64::from(u32::get(&v, i) >> 31) << i)
            } else {
                (0..2).fold(0u64, |a, i| a | (q(&v, i) >> 63) << i)
            };
            write_reg(c.cpu, ins.op0_register(), mask);
        }
        Xorps | Xorpd | Andps | Andpd | Andnps | Andnpd | Orps | Orpd => {
            let a = c.get(0)?;
            let b = c.get(1)?;
            let r = match m {
                Xorps | Xorpd => zip::<u64>(&a, &b, |x, y| x ^ y),
                Andps | Andpd => zip::<u64>(&a, &b, |x, y| x & y),
                Andnps | Andnpd => zip::<u64>(&a, &b, |x, y| !x & y),
                _ => zip::<u64>(&a, &b, |x, y| x | y),
            };
            c.set(0, r)?;
        }
        Unpcklps | Unpckhps | Unpcklpd | Unpckhpd => {
            let a = c.get(0)?;
            let b = c.get(1)?;
            let s = if matches!(m, Unpcklps | Unpckhps) { 4 } else { 8 };
            c.set(0, unpack(&a, &b, s, matches!(m, Unpckhps | Unpckhpd)))?;
        }
        Shufps | Shufpd => {
            let a = c.get(0)?;
            let b = c.get(1)?;
            let imm = usize::from(c.imm());
            let mut r = [0; 16];
            if m == Shufps {
                for i in 0..4 {
                    let src = if i < 2 { &a } else { &b };
                    u32::put(&mut r, i, u32::get(src, (imm >> (2 * i)) & 3));
                }
            } else {
                r = from_q(q(&a, imm & 1), q(&b, (imm >> 1) & 1));
            }
            c.set(0, r)?;
        }
        Ldmxcsr => {
            let v = Operands { cpu: c.cpu, ins }.read(0)? as u32;
            if v & !MXCSR_MASK != 0 {
                return Err(Exception::gp0());
            }
            c.cpu.state.fpu.mxcsr = v;
        }
        Stmxcsr => {
            let v = u64::from(c.cpu.state.fpu.mxcsr);
            Operands { cpu: c.cpu, ins }.write(0, v)?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

// ---- Floating point ----

/// MXCSR state for one instruction: the control bits and the flags raised so far.
struct Mx {
    csr: u32,
    flags: u32,
}

impl Mx {
    fn rc(&self) -> u32 {
        (self.csr >> 13) & 3
    }
    fn daz(&self) -> bool {
        self.csr & (1 << 6) != 0
    }
    fn ftz(&self) -> bool {
        self.csr & (1 << 15) != 0
    }
}

/// A single or double value's bits, with its format.
#[derive(Clone, Copy)]
struct Fmt {
    dbl: bool,
}

impl Fmt {
    fn exp_mask(self) -> u64 {
        if self.dbl {
            0x7ff0_0000_0000_0000
        } else {
            0x7f80_0000
        }
    }
    fn frac_mask(self) -> u64 {
        if self.dbl {
            (1 << 52) - 1
        } else {
            (1 << 23) - 1
        }
    }
    fn sign(self) -> u64 {
        if self.dbl {
            1 << 63
        } else {
            1 << 31
        }
    }
    fn quiet_bit(self) -> u64 {
        if self.dbl {
            1 << 51
        } else {
            1 << 22
        }
    }
    fn is_nan(self, x: u64) -> bool {
        x & self.exp_mask() == self.exp_mask() && x & self.frac_mask() != 0
    }
    fn is_snan(self, x: u64) -> bool {
        self.is_nan(x) && x & self.quiet_bit() == 0
    }
    fn is_denormal(self, x: u64) -> bool {
        x & self.exp_mask() == 0 && x & self.frac_mask() != 0
    }
    fn default_nan(self) -> u64 {
        if self.dbl {
            0xfff8_0000_0000_0000
        } else {
            0xffc0_0000
        }
    }
    fn to_f64(self, x: u64) -> f64 {
        if self.dbl {
            f64::from_bits(x)
        } else {
            f64::from(f32::from_bits(x as u32))
        }
    }
    /// Applies DAZ (denormal → signed zero) or notes DE.
    fn input(self, mx: &mut Mx, x: u64) -> u64 {
        if self.is_denormal(x) {
            if mx.daz() {
                return x & self.sign();
            }
            mx.flags |= F_DE;
        }
        x
    }
    /// Rounds an f64 value known to lie within `sign × [0, inf]` with the rounding
    /// direction `dir` (sign of exact − value) to this format, with MXCSR's mode and
    /// FTZ; sets PE/UE/OE.
    fn round(self, mx: &mut Mx, r: f64, dir: i8, overflow: bool) -> u64 {
        if self.dbl {
            let mut flags = 0;
            if dir != 0 {
                flags |= F_PE;
            }
            if overflow {
                flags |= F_OE | F_PE;
            }
            let mut v = r;
            if dir != 0 && v.abs() < f64::MIN_POSITIVE {
                flags |= F_UE;
            }
            if mx.ftz() && v != 0.0 && v.abs() < f64::MIN_POSITIVE {
                v = 0.0f64.copysign(v);
                flags |= F_UE | F_PE;
            }
            mx.flags |= flags;
            return v.to_bits();
        }
        if r.is_infinite() {
            return (r as f32).to_bits().into();
        }
        if r == 0.0 {
            return u64::from((r as f32).to_bits());
        }
        let (sign, mut m, mut e) = f64_parts(r);
        // The exact value is slightly beyond or short of `r`: a sticky bit below its
        // 53 bits (which `m` has in its top bits).
        let away = if sign { dir < 0 } else { dir > 0 };
        if dir != 0 {
            if away {
                m |= 1;
            } else if m == 1 << 63 {
                m = u64::MAX;
                e -= 1;
            } else {
                m -= 1;
            }
        }
        let (mut bits, fl) = round_bin(sign, m, e, 24, 8, mx.rc());
        mx.flags |= fl;
        if mx.ftz() && self.is_denormal(bits) {
            bits &= self.sign();
            mx.flags |= F_UE | F_PE;
        }
        bits
    }
}

/// A finite nonzero f64 as (sign, significand with bit 63 set, exponent of bit 63).
fn f64_parts(r: f64) -> (bool, u64, i32) {
    let b = r.to_bits();
    let sign = b >> 63 != 0;
    let exp = ((b >> 52) & 0x7ff) as i32;
    let frac = b & ((1 << 52) - 1);
    if exp == 0 {
        let lz = frac.leading_zeros();
        (sign, frac << lz, (63 - lz as i32) - 1074)
    } else {
        (sign, 1 << 63 | frac << 11, exp - 1023)
    }
}

/// One lane of ADD/SUB/MUL/DIV/SQRT.
fn arith(mx: &mut Mx, f: Fmt, op: FOp, a: u64, b: u64) -> u64 {
    let a_nan = op != FOp::Sqrt && f.is_nan(a);
    if a_nan || f.is_nan(b) {
        if (op != FOp::Sqrt && f.is_snan(a)) || f.is_snan(b) {
            mx.flags |= F_IE;
        }
        return if a_nan { a } else { b } | f.quiet_bit();
    }
    // Pre-computation exceptions by priority: invalid, then divide-by-zero, then
    // denormal operand (a lane reports only the first).
    let mut pre = Mx { csr: mx.csr, flags: 0 };
    let a = if op == FOp::Sqrt { 0 } else { f.input(&mut pre, a) };
    let b = f.input(&mut pre, b);
    let (x, y) = (f.to_f64(a), f.to_f64(b));
    let rc = if f.dbl { mx.rc() } else { RC_NEAR };
    let (mut r, dir, overflow) = op_f64(op, x, y, rc);
    if r.is_nan() {
        mx.flags |= F_IE;
        return f.default_nan();
    }
    if op == FOp::Div && y == 0.0 && x.is_finite() && x != 0.0 {
        mx.flags |= F_ZE;
    } else {
        mx.flags |= pre.flags;
    }
    if !f.dbl && r == 0.0 && dir == 0 && matches!(op, FOp::Add | FOp::Sub) && mx.rc() == RC_DOWN {
        // An exact zero sum of operands not both +0 is −0 when rounding down.
        r = op_f64(op, x, y, RC_DOWN).0;
    }
    f.round(mx, r, dir, overflow)
}

fn min_max(mx: &mut Mx, f: Fmt, max: bool, a: u64, b: u64) -> u64 {
    if f.is_nan(a) || f.is_nan(b) {
        mx.flags |= F_IE;
        // The second operand, denormals zeroed under DAZ.
        return if mx.daz() && f.is_denormal(b) { b & f.sign() } else { b };
    }
    let (a, b) = (f.input(mx, a), f.input(mx, b));
    let (x, y) = (f.to_f64(a), f.to_f64(b));
    let first = if max { x > y } else { x < y };
    if first {
        a
    } else {
        b
    }
}

/// CMPccPS/PD/SS/SD predicate `p` (0..7): all ones or zero.
fn cmp_pred(mx: &mut Mx, f: Fmt, p: u8, a: u64, b: u64) -> bool {
    let unord = f.is_nan(a) || f.is_nan(b);
    let signals = matches!(p & 7, 1 | 2 | 5 | 6);
    if (unord && signals) || f.is_snan(a) || f.is_snan(b) {
        mx.flags |= F_IE;
    }
    if unord {
        return matches!(p & 7, 3..=6);
    }
    let (a, b) = (f.input(mx, a), f.input(mx, b));
    let (x, y) = (f.to_f64(a), f.to_f64(b));
    match p & 7 {
        0 => x == y,
        1 => x < y,
        2 => x <= y,
        3 => unord,
        4 => unord || x != y,
        5 => x >= y, // ordered here
        6 => x > y,
        _ => !unord,
    }
}

/// Float → integer (32 or 64 bits), rounding with `rc`; the integer indefinite
/// (most negative value) and IE for NaN, infinity and out-of-range values.
fn to_int(mx: &mut Mx, f: Fmt, x: u64, rc: u32, bits: u32) -> u64 {
    let indefinite = 1u64 << (bits - 1);
    if f.is_nan(x) {
        mx.flags |= F_IE;
        return indefinite;
    }
    let x = if mx.daz() && f.is_denormal(x) { x & f.sign() } else { x };
    let v = f.to_f64(x);
    let r = match rc {
        RC_NEAR => v.round_ties_even(),
        1 => v.floor(),
        2 => v.ceil(),
        _ => v.trunc(),
    };
    let lim = (1u64 << (bits - 1)) as f64;
    if !(r >= -lim && r < lim) {
        mx.flags |= F_IE;
        return indefinite;
    }
    if r != v {
        mx.flags |= F_PE;
    }
    (r as i64 as u64) & if bits == 32 { 0xffff_ffff } else { u64::MAX }
}

/// Integer → float with MXCSR rounding.
fn from_int(mx: &mut Mx, f: Fmt, v: i64) -> u64 {
    if v == 0 {
        return 0;
    }
    let mag = v.unsigned_abs();
    let lz = mag.leading_zeros();
    let (p, eb) = if f.dbl { (53, 11) } else { (24, 8) };
    let (bits, fl) = round_bin(v < 0, mag << lz, 63 - lz as i32, p, eb, mx.rc());
    mx.flags |= fl;
    bits
}

/// Single ↔ double.
fn convert(mx: &mut Mx, from: Fmt, x: u64) -> u64 {
    if from.is_nan(x) {
        if from.is_snan(x) {
            mx.flags |= F_IE;
        }
        let sign = x & from.sign() != 0;
        return if from.dbl {
            let payload = (x >> 29) & ((1 << 22) - 1);
            u64::from(sign) << 31 | 0x7fc0_0000 | payload
        } else {
            let payload = (x & ((1 << 22) - 1)) << 29;
            u64::from(sign) << 63 | 0x7ff8_0000_0000_0000 | payload
        };
    }
    let x = from.input(mx, x);
    let v = from.to_f64(x);
    if !from.dbl {
        return v.to_bits();
    }
    if v == 0.0 || v.is_infinite() {
        return u64::from((v as f32).to_bits());
    }
    let (sign, m, e) = f64_parts(v);
    let (mut bits, fl) = round_bin(sign, m, e, 24, 8, mx.rc());
    mx.flags |= fl;
    if mx.ftz() && (Fmt { dbl: false }).is_denormal(bits) {
        bits &= 1 << 31;
        mx.flags |= F_UE | F_PE;
    }
    bits
}

/// Commits the flags: an unmasked one raises #XM (#UD without CR4.OSXMMEXCPT) before
/// the destination is written.
fn commit(cpu: &mut Cpu, mx: &Mx) -> Result<()> {
    let fl = mx.flags & 0x3f;
    cpu.state.fpu.mxcsr |= fl;
    if fl & !(mx.csr >> 7) & 0x3f != 0 {
        log::debug!("tcg sse: unmasked SIMD exception {fl:#x} (mxcsr {:#x})", mx.csr);
        return Err(if cpu.state.cr4 & CR4_OSXMMEXCPT != 0 { Exception::new(vector::XM) } else { Exception::ud() });
    }
    Ok(())
}

fn float(c: &mut Ctx) -> Result<bool> {
    use Mnemonic::*;
    let ins = c.ins;
    let m = ins.mnemonic();
    let mut mx = Mx { csr: c.cpu.state.fpu.mxcsr, flags: 0 };
    let d = Fmt { dbl: true };
    let s = Fmt { dbl: false };
    // Lanes: (format, count); scalar forms touch lane 0 only.
    let shape = |m: Mnemonic| -> (Fmt, usize) {
        match m {
            Addss | Subss | Mulss | Divss | Sqrtss | Minss | Maxss | Rcpss | Rsqrtss => (s, 1),
            Addsd | Subsd | Mulsd | Divsd | Sqrtsd | Minsd | Maxsd => (d, 1),
            Addpd | Subpd | Mulpd | Divpd | Sqrtpd | Minpd | Maxpd => (d, 2),
            _ => (s, 4),
        }
    };
    let lane = |v: &V, f: Fmt, i: usize| if f.dbl { q(v, i) } else { u64::from(u32::get(v, i)) };
    let put = |v: &mut V, f: Fmt, i: usize, x: u64| {
        if f.dbl {
            u64::put(v, i, x)
        } else {
            u32::put(v, i, x as u32)
        }
    };
    match m {
        Addss | Addsd | Addps | Addpd | Subss | Subsd | Subps | Subpd | Mulss | Mulsd | Mulps | Mulpd | Divss
        | Divsd | Divps | Divpd | Sqrtss | Sqrtsd | Sqrtps | Sqrtpd | Minss | Minsd | Minps | Minpd | Maxss | Maxsd
        | Maxps | Maxpd | Rcpps | Rcpss | Rsqrtps | Rsqrtss => {
            let (f, n) = shape(m);
            let mut a = c.get(0)?;
            let b = c.get(1)?;
            let one = if f.dbl { 1f64.to_bits() } else { u64::from(1f32.to_bits()) };
            for i in 0..n {
                let (x, y) = (lane(&a, f, i), lane(&b, f, i));
                let r = match m {
                    Addss | Addsd | Addps | Addpd => arith(&mut mx, f, FOp::Add, x, y),
                    Subss | Subsd | Subps | Subpd => arith(&mut mx, f, FOp::Sub, x, y),
                    Mulss | Mulsd | Mulps | Mulpd => arith(&mut mx, f, FOp::Mul, x, y),
                    Divss | Divsd | Divps | Divpd => arith(&mut mx, f, FOp::Div, x, y),
                    Sqrtss | Sqrtsd | Sqrtps | Sqrtpd => arith(&mut mx, f, FOp::Sqrt, x, y),
                    Minss | Minsd | Minps | Minpd => min_max(&mut mx, f, false, x, y),
                    Maxss | Maxsd | Maxps | Maxpd => max_of(&mut mx, f, x, y),
                    Rcpps | Rcpss => {
                        // Approximations: no flags, DAZ-like handling of denormals.
                        let mut t = Mx { csr: (mx.csr & !(3 << 13)) | 1 << 15 | 1 << 6, flags: 0 };
                        arith(&mut t, f, FOp::Div, one, y)
                    }
                    _ => {
                        let mut t = Mx { csr: (mx.csr & !(3 << 13)) | 1 << 15 | 1 << 6, flags: 0 };
                        let r = arith(&mut t, f, FOp::Sqrt, 0, y);
                        arith(&mut t, f, FOp::Div, one, r)
                    }
                };
                put(&mut a, f, i, r);
            }
            commit(c.cpu, &mx)?;
            c.set(0, a)?;
        }
        Cmpps | Cmppd | Cmpss | Cmpsd => {
            let (f, n) = match ins.code() {
                Code::Cmpps_xmm_xmmm128_imm8 => (s, 4),
                Code::Cmppd_xmm_xmmm128_imm8 => (d, 2),
                Code::Cmpss_xmm_xmmm32_imm8 => (s, 1),
                Code::Cmpsd_xmm_xmmm64_imm8 => (d, 1),
                _ => return Ok(false),
            };
            let mut a = c.get(0)?;
            let b = c.get(1)?;
            let p = c.imm();
            for i in 0..n {
                let t = cmp_pred(&mut mx, f, p, lane(&a, f, i), lane(&b, f, i));
                put(&mut a, f, i, if t { u64::MAX } else { 0 });
            }
            commit(c.cpu, &mx)?;
            c.set(0, a)?;
        }
        Ucomiss | Ucomisd | Comiss | Comisd => {
            let f = Fmt { dbl: matches!(m, Ucomisd | Comisd) };
            let a = c.get(0)?;
            let b = c.get(1)?;
            let (x, y) = (lane(&a, f, 0), lane(&b, f, 0));
            let unord = f.is_nan(x) || f.is_nan(y);
            if f.is_snan(x) || f.is_snan(y) || (unord && matches!(m, Comiss | Comisd)) {
                mx.flags |= F_IE;
            }
            let (x, y) = if unord { (x, y) } else { (f.input(&mut mx, x), f.input(&mut mx, y)) };
            let (x, y) = (f.to_f64(x), f.to_f64(y));
            let bits = if unord {
                ZF | PF | CF
            } else if x < y {
                CF
            } else if x == y {
                ZF
            } else {
                0
            };
            commit(c.cpu, &mx)?;
            let fl = c.cpu.state.flags() & !(ZF | PF | CF | OF | SF | AF);
            c.cpu.state.set_flags(fl | bits);
        }
        Cvtsi2ss | Cvtsi2sd => {
            let f = Fmt { dbl: m == Cvtsi2sd };
            let mut a = c.get(0)?;
            let v = Operands { cpu: c.cpu, ins }.read(1)?;
            let v = if width_of(c, 1) == 4 { i64::from(v as u32 as i32) } else { v as i64 };
            let r = from_int(&mut mx, f, v);
            put(&mut a, f, 0, r);
            commit(c.cpu, &mx)?;
            c.set(0, a)?;
        }
        Cvttss2si | Cvttsd2si | Cvtss2si | Cvtsd2si => {
            let f = Fmt { dbl: matches!(m, Cvttsd2si | Cvtsd2si) };
            let b = c.get(1)?;
            let rc = if matches!(m, Cvttss2si | Cvttsd2si) { RC_ZERO } else { mx.rc() };
            let bits = ins.op0_register().size() as u32 * 8;
            let r = to_int(&mut mx, f, lane(&b, f, 0), rc, bits);
            commit(c.cpu, &mx)?;
            write_reg(c.cpu, ins.op0_register(), r);
        }
        Cvtss2sd | Cvtsd2ss => {
            let from = Fmt { dbl: m == Cvtsd2ss };
            let to = Fmt { dbl: !from.dbl };
            let mut a = c.get(0)?;
            let b = c.get(1)?;
            let r = convert(&mut mx, from, lane(&b, from, 0));
            put(&mut a, to, 0, r);
            commit(c.cpu, &mx)?;
            c.set(0, a)?;
        }
        Cvtps2pd | Cvtpd2ps => {
            let from = Fmt { dbl: m == Cvtpd2ps };
            let to = Fmt { dbl: !from.dbl };
            let b = c.get(1)?;
            let mut r = [0; 16];
            for i in 0..2 {
                let v = convert(&mut mx, from, lane(&b, from, i));
                put(&mut r, to, i, v);
            }
            commit(c.cpu, &mx)?;
            c.set(0, r)?;
        }
        Cvtdq2ps | Cvtdq2pd => {
            let b = c.get(1)?;
            let (f, n) = if m == Cvtdq2ps { (s, 4) } else { (d, 2) };
            let mut r = [0; 16];
            for i in 0..n {
                let v = from_int(&mut mx, f, i64::from(i32::get(&b, i)));
                put(&mut r, f, i, v);
            }
            commit(c.cpu, &mx)?;
            c.set(0, r)?;
        }
        Cvtps2dq | Cvttps2dq | Cvtpd2dq | Cvttpd2dq => {
            let b = c.get(1)?;
            let (f, n) = if matches!(m, Cvtps2dq | Cvttps2dq) { (s, 4) } else { (d, 2) };
            let rc = if matches!(m, Cvttps2dq | Cvttpd2dq) { RC_ZERO } else { mx.rc() };
            let mut r = [0; 16];
            for i in 0..n {
                let v = to_int(&mut mx, f, lane(&b, f, i), rc, 32);
                u32::put(&mut r, i, v as u32);
            }
            commit(c.cpu, &mx)?;
            c.set(0, r)?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn max_of(mx: &mut Mx, f: Fmt, a: u64, b: u64) -> u64 {
    min_max(mx, f, true, a, b)
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::super::x87::harness::{check, fault, sse_cpu, Buf, RAX, RCX};
    use super::*;
    use crate::interp::testutil::asm;

    type Gen = fn(&mut CodeAssembler) -> std::result::Result<(), IcedError>;

    /// Deterministic 16-byte patterns: edge values and pseudo-random ones.
    fn patterns() -> Vec<V> {
        let mut v: Vec<V> = vec![[0; 16], [0xff; 16], [0x80; 16], [0x7f; 16], [0x01; 16]];
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..12 {
            let mut p = [0; 16];
            for b in p.iter_mut() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                *b = (x >> 56) as u8;
            }
            v.push(p);
        }
        let mut mixed = [0; 16];
        for (i, b) in mixed.iter_mut().enumerate() {
            *b = [0, 0x7f, 0x80, 0xff, 1, 0xfe, 0x81, 0x40][i % 8];
        }
        v.push(mixed);
        v
    }

    /// Loads XMM0 (and MM0) from [rdi], XMM1 (MM1) from [rdi+16], MXCSR from
    /// [rdi+0x40]; runs `op`; stores XMM0, XMM1, MM0 and MXCSR.
    fn wrap(op: impl FnOnce(&mut CodeAssembler) -> std::result::Result<(), IcedError>) -> Vec<u8> {
        asm(64, |a| {
            a.ldmxcsr(dword_ptr(rdi + 0x40))?;
            a.movdqu(xmm0, xmmword_ptr(rdi))?;
            a.movdqu(xmm1, xmmword_ptr(rdi + 0x10))?;
            op(a)?;
            a.movdqu(xmmword_ptr(rdi + 0x100), xmm0)?;
            a.movdqu(xmmword_ptr(rdi + 0x110), xmm1)?;
            a.stmxcsr(dword_ptr(rdi + 0x120))
        })
    }

    fn run_pairs(name: &str, code: &[u8], vals: &[V], mxcsr: &[u32]) {
        // Without an x86 CPU to compare with, the JIT is compared with the interpreter
        // (which a backend without SSE code calls, see `check_fix`), and under an
        // emulator at that: every fifth pair is enough there. The differential cases,
        // recorded on x86-64, compare both with x86.
        let stride = if cfg!(target_arch = "x86_64") { 1 } else { 5 };
        let pairs = vals.iter().flat_map(|x| vals.iter().map(move |y| (x, y)));
        for &csr in mxcsr {
            for (x, y) in pairs.clone().step_by(stride) {
                let mut d = Buf::default();
                d.put(0, x).put(0x10, y).put(0x40, &csr.to_le_bytes());
                d.put(RAX, &q(x, 0).to_le_bytes()).put(RCX, &q(y, 1).to_le_bytes());
                check(&format!("{name} mxcsr={csr:#x}"), code, &d, &[]);
            }
        }
    }

    #[test]
    fn integer_ops_match_the_host() {
        let ops: Vec<(&str, Gen)> = vec![
            ("pxor", |a| a.pxor(xmm0, xmm1)),
            ("por", |a| a.por(xmm0, xmm1)),
            ("pand", |a| a.pand(xmm0, xmm1)),
            ("pandn", |a| a.pandn(xmm0, xmm1)),
            ("xorps", |a| a.xorps(xmm0, xmm1)),
            ("andnpd", |a| a.andnpd(xmm0, xmm1)),
            ("pcmpeqb", |a| a.pcmpeqb(xmm0, xmm1)),
            ("pcmpeqw", |a| a.pcmpeqw(xmm0, xmm1)),
            ("pcmpeqd", |a| a.pcmpeqd(xmm0, xmm1)),
            ("pcmpgtb", |a| a.pcmpgtb(xmm0, xmm1)),
            ("pcmpgtw", |a| a.pcmpgtw(xmm0, xmm1)),
            ("pcmpgtd m128", |a| a.pcmpgtd(xmm0, xmmword_ptr(rdi + 0x10))),
            ("pminub", |a| a.pminub(xmm0, xmm1)),
            ("pmaxub", |a| a.pmaxub(xmm0, xmm1)),
            ("pminsw", |a| a.pminsw(xmm0, xmm1)),
            ("pmaxsw", |a| a.pmaxsw(xmm0, xmm1)),
            ("paddb", |a| a.paddb(xmm0, xmm1)),
            ("paddw", |a| a.paddw(xmm0, xmm1)),
            ("paddd", |a| a.paddd(xmm0, xmm1)),
            ("paddq", |a| a.paddq(xmm0, xmm1)),
            ("psubb", |a| a.psubb(xmm0, xmm1)),
            ("psubw", |a| a.psubw(xmm0, xmm1)),
            ("psubd", |a| a.psubd(xmm0, xmm1)),
            ("psubq", |a| a.psubq(xmm0, xmm1)),
            ("paddusb", |a| a.paddusb(xmm0, xmm1)),
            ("paddusw", |a| a.paddusw(xmm0, xmm1)),
            ("psubusb", |a| a.psubusb(xmm0, xmm1)),
            ("psubusw", |a| a.psubusw(xmm0, xmm1)),
            ("paddsb", |a| a.paddsb(xmm0, xmm1)),
            ("psubsw", |a| a.psubsw(xmm0, xmm1)),
            ("psadbw", |a| a.psadbw(xmm0, xmm1)),
            ("punpcklbw", |a| a.punpcklbw(xmm0, xmm1)),
            ("punpcklwd", |a| a.punpcklwd(xmm0, xmm1)),
            ("punpckldq", |a| a.punpckldq(xmm0, xmm1)),
            ("punpcklqdq", |a| a.punpcklqdq(xmm0, xmm1)),
            ("punpckhbw", |a| a.punpckhbw(xmm0, xmm1)),
            ("punpckhwd", |a| a.punpckhwd(xmm0, xmm1)),
            ("punpckhdq", |a| a.punpckhdq(xmm0, xmm1)),
            ("punpckhqdq", |a| a.punpckhqdq(xmm0, xmm1)),
            ("unpcklps", |a| a.unpcklps(xmm0, xmm1)),
            ("unpckhpd", |a| a.unpckhpd(xmm0, xmm1)),
            ("packuswb", |a| a.packuswb(xmm0, xmm1)),
            ("packsswb", |a| a.packsswb(xmm0, xmm1)),
            ("packssdw", |a| a.packssdw(xmm0, xmm1)),
            ("pmullw", |a| a.pmullw(xmm0, xmm1)),
            ("pmulhw", |a| a.pmulhw(xmm0, xmm1)),
            ("pmulhuw", |a| a.pmulhuw(xmm0, xmm1)),
            ("pmuludq", |a| a.pmuludq(xmm0, xmm1)),
            ("pmaddwd", |a| a.pmaddwd(xmm0, xmm1)),
            ("pavgb", |a| a.pavgb(xmm0, xmm1)),
            ("pavgw", |a| a.pavgw(xmm0, xmm1)),
            ("pshufd", |a| a.pshufd(xmm0, xmm1, 0x1b)),
            ("pshuflw", |a| a.pshuflw(xmm0, xmm1, 0x9c)),
            ("pshufhw", |a| a.pshufhw(xmm0, xmmword_ptr(rdi + 0x10), 0x72)),
            ("shufps", |a| a.shufps(xmm0, xmm1, 0xb1)),
            ("shufpd", |a| a.shufpd(xmm0, xmm1, 2)),
            ("pslldq", |a| a.pslldq(xmm0, 5)),
            ("psrldq", |a| a.psrldq(xmm0, 11)),
            ("psrldq 16", |a| a.psrldq(xmm0, 16)),
            ("pmovmskb", |a| a.pmovmskb(eax, xmm1)),
            ("movmskps", |a| a.movmskps(eax, xmm1)),
            ("movmskpd", |a| a.movmskpd(rcx, xmm0)),
            ("pextrw", |a| a.pextrw(eax, xmm1, 5)),
            ("pinsrw", |a| a.pinsrw(xmm0, ecx, 6)),
            ("pinsrw m16", |a| a.pinsrw(xmm0, word_ptr(rdi + 0x12), 1)),
            // MMX forms.
            ("pxor mm", |a| {
                a.movq(mm0, qword_ptr(rdi))?;
                a.movq(mm1, qword_ptr(rdi + 0x18))?;
                a.paddb(mm0, mm1)?;
                a.punpckhbw(mm1, mm0)?;
                a.packsswb(mm0, mm1)?;
                a.pmovmskb(eax, mm0)?;
                a.pshufw(mm1, mm0, 0x4e)?;
                a.psadbw(mm0, mm1)?;
                a.movq(qword_ptr(rdi + 0x130), mm0)?;
                a.movq(rcx, mm1)?;
                a.emms()
            }),
        ];
        let vals = patterns();
        for (name, op) in ops {
            run_pairs(name, &wrap(op), &vals, &[0x1f80]);
        }
    }

    #[test]
    fn shifts_match_the_host() {
        let ops: Vec<(&str, Gen)> = vec![
            ("psllw", |a| a.psllw(xmm0, xmm1)),
            ("pslld", |a| a.pslld(xmm0, xmm1)),
            ("psllq", |a| a.psllq(xmm0, xmm1)),
            ("psrlw", |a| a.psrlw(xmm0, xmm1)),
            ("psrld", |a| a.psrld(xmm0, xmm1)),
            ("psrlq", |a| a.psrlq(xmm0, xmm1)),
            ("psraw", |a| a.psraw(xmm0, xmm1)),
            ("psrad", |a| a.psrad(xmm0, xmmword_ptr(rdi + 0x10))),
            ("imm", |a| {
                a.psllw(xmm0, 3)?;
                a.psrad(xmm1, 7)?;
                a.psraw(xmm0, 33)?;
                a.psrlq(xmm1, 63)?;
                a.pslld(xmm0, 1)
            }),
        ];
        let vals = patterns();
        let mut counts = vec![];
        for n in [0u64, 1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 200, 1 << 40] {
            counts.push(from_q(n, 0xdead));
        }
        for (name, op) in ops {
            let code = wrap(op);
            for x in &vals {
                for y in &counts {
                    let mut d = Buf::default();
                    d.put(0, x).put(0x10, y).put(0x40, &0x1f80u32.to_le_bytes());
                    check(name, &code, &d, &[]);
                }
            }
        }
    }

    #[test]
    fn moves_match_the_host() {
        let ops: Vec<(&str, Gen)> = vec![
            ("movss rr", |a| a.movss(xmm0, xmm1)),
            ("movss load", |a| a.movss(xmm0, dword_ptr(rdi + 0x14))),
            ("movss store", |a| a.movss(dword_ptr(rdi + 0x104), xmm1)),
            ("movsd rr", |a| a.movsd_2(xmm0, xmm1)),
            ("movsd load", |a| a.movsd_2(xmm0, qword_ptr(rdi + 0x18))),
            ("movq xmm,xmm", |a| a.movq(xmm0, xmm1)),
            ("movq xmm,m64", |a| a.movq(xmm0, qword_ptr(rdi + 0x18))),
            ("movq m64,xmm", |a| a.movq(qword_ptr(rdi + 0x104), xmm1)),
            ("movq xmm,rax", |a| a.movq(xmm0, rax)),
            ("movq rcx,xmm", |a| a.movq(rcx, xmm0)),
            ("movd xmm,ecx", |a| a.movd(xmm1, ecx)),
            ("movd eax,xmm", |a| a.movd(eax, xmm1)),
            ("movd m32,xmm", |a| a.movd(dword_ptr(rdi + 0x108), xmm0)),
            ("movd xmm,m32", |a| a.movd(xmm0, dword_ptr(rdi + 0x1c))),
            ("movhps", |a| a.movhps(xmm0, qword_ptr(rdi + 0x10))),
            ("movhps st", |a| a.movhps(qword_ptr(rdi + 0x100), xmm1)),
            ("movlps", |a| a.movlps(xmm0, qword_ptr(rdi + 0x18))),
            ("movlpd st", |a| a.movlpd(qword_ptr(rdi + 0x108), xmm1)),
            ("movhpd", |a| a.movhpd(xmm1, qword_ptr(rdi))),
            ("movlhps", |a| a.movlhps(xmm0, xmm1)),
            ("movhlps", |a| a.movhlps(xmm0, xmm1)),
            ("movaps", |a| a.movaps(xmm0, xmmword_ptr(rdi + 0x10))),
            ("movapd st", |a| a.movapd(xmmword_ptr(rdi + 0x100), xmm1)),
            ("movups", |a| a.movups(xmm0, xmmword_ptr(rdi + 0x3))),
            ("movdqa rr", |a| a.movdqa(xmm0, xmm1)),
            ("movntdq", |a| a.movntdq(xmmword_ptr(rdi + 0x100), xmm1)),
            ("movntps", |a| a.movntps(xmmword_ptr(rdi + 0x100), xmm1)),
            ("movnti", |a| a.movnti(qword_ptr(rdi + 0x108), rax)),
        ];
        let vals = &patterns()[..8];
        for (name, op) in ops {
            run_pairs(name, &wrap(op), vals, &[0x1f80]);
        }
    }

    /// Float bit patterns: zeros, ones, denormals, extremes, infinities, NaNs.
    fn f32s() -> Vec<u32> {
        vec![
            0,
            0x8000_0000,
            1f32.to_bits(),
            (-2.5f32).to_bits(),
            3f32.to_bits(),
            0.1f32.to_bits(),
            (1.0f32 / 3.0).to_bits(),
            0x0000_0001,
            0x807f_ffff,
            0x0080_0000,
            f32::MAX.to_bits(),
            (-1e30f32).to_bits(),
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7fa0_0001,
            0xffc1_2345,
            16777217f32.to_bits(),
            2.1e9f32.to_bits(),
            (-2147483648f32).to_bits(),
            9.3e18f32.to_bits(),
            0.5f32.to_bits(),
            1.5f32.to_bits(),
            (-2.5f32).to_bits(),
        ]
    }

    fn f64s() -> Vec<u64> {
        vec![
            0,
            1 << 63,
            1f64.to_bits(),
            (-2.5f64).to_bits(),
            3f64.to_bits(),
            0.1f64.to_bits(),
            (1.0f64 / 3.0).to_bits(),
            1,
            0x800f_ffff_ffff_ffff,
            0x0010_0000_0000_0000,
            f64::MAX.to_bits(),
            (-1e300f64).to_bits(),
            0x7ff0_0000_0000_0000,
            0xfff0_0000_0000_0000,
            0x7ff8_0000_0000_0000,
            0x7ff4_0000_0000_0001,
            0xfff8_1234_5678_9abc,
            2147483647.5f64.to_bits(),
            (-2147483648.5f64).to_bits(),
            9.3e18f64.to_bits(),
            (-((1u64 << 63) as f64)).to_bits(),
            3.4e38f64.to_bits(),
            1e-40f64.to_bits(),
            1.5e-45f64.to_bits(),
        ]
    }

    /// Vectors of float lanes, rotating through the samples so every lane sees each.
    fn float_vecs(dbl: bool) -> Vec<V> {
        let mut out = vec![];
        if dbl {
            let v = f64s();
            for i in 0..v.len() {
                out.push(from_q(v[i], v[(i + 7) % v.len()]));
            }
        } else {
            let v = f32s();
            for i in 0..v.len() {
                let mut r = [0; 16];
                for l in 0..4 {
                    u32::put(&mut r, l, v[(i + l * 5) % v.len()]);
                }
                out.push(r);
            }
        }
        out
    }

    const MODES: [u32; 7] = [0x1f80, 0x3f80, 0x5f80, 0x7f80, 0x9f80, 0x1fc0, 0xdfc0];

    #[test]
    fn float_arithmetic_matches_the_host() {
        let ps: Vec<(&str, Gen)> = vec![
            ("addps", |a| a.addps(xmm0, xmm1)),
            ("subps", |a| a.subps(xmm0, xmm1)),
            ("mulps", |a| a.mulps(xmm0, xmm1)),
            ("divps", |a| a.divps(xmm0, xmm1)),
            ("sqrtps", |a| a.sqrtps(xmm0, xmm1)),
            ("minps", |a| a.minps(xmm0, xmm1)),
            ("maxps", |a| a.maxps(xmm0, xmm1)),
            ("addss", |a| a.addss(xmm0, xmm1)),
            ("divss m32", |a| a.divss(xmm0, dword_ptr(rdi + 0x14))),
            ("sqrtss", |a| a.sqrtss(xmm0, xmm1)),
            ("cmpps", |a| {
                a.movaps(xmm2, xmm0)?;
                a.cmpps(xmm2, xmm1, 1)?;
                a.movaps(xmm3, xmm0)?;
                a.cmpps(xmm3, xmm1, 3)?;
                a.cmpps(xmm0, xmm1, 6)?;
                a.cmpss(xmm1, xmm3, 4)?;
                a.pxor(xmm0, xmm2)?;
                a.pxor(xmm1, xmm3)
            }),
            ("cvtps2pd", |a| a.cvtps2pd(xmm0, xmm1)),
            ("cvtss2sd", |a| a.cvtss2sd(xmm0, xmm1)),
            ("cvtps2dq", |a| a.cvtps2dq(xmm0, xmm1)),
            ("cvttps2dq", |a| a.cvttps2dq(xmm0, xmm1)),
            ("cvtdq2ps", |a| a.cvtdq2ps(xmm0, xmm1)),
            ("cvtdq2pd", |a| a.cvtdq2pd(xmm0, xmm1)),
            ("cvtss2si", |a| {
                a.cvtss2si(eax, xmm1)?;
                a.cvttss2si(rcx, xmm1)
            }),
            ("cvtsi2ss", |a| {
                a.cvtsi2ss(xmm0, eax)?;
                a.cvtsi2ss(xmm1, rcx)
            }),
            ("comiss", |a| a.comiss(xmm0, xmm1)),
            ("ucomiss", |a| a.ucomiss(xmm0, xmm1)),
        ];
        let pd: Vec<(&str, Gen)> = vec![
            ("addpd", |a| a.addpd(xmm0, xmm1)),
            ("subpd", |a| a.subpd(xmm0, xmm1)),
            ("mulpd", |a| a.mulpd(xmm0, xmm1)),
            ("divpd", |a| a.divpd(xmm0, xmm1)),
            ("sqrtpd", |a| a.sqrtpd(xmm0, xmm1)),
            ("minsd", |a| a.minsd(xmm0, xmm1)),
            ("maxpd", |a| a.maxpd(xmm0, xmm1)),
            ("mulsd m64", |a| a.mulsd(xmm0, qword_ptr(rdi + 0x18))),
            ("subsd", |a| a.subsd(xmm0, xmm1)),
            ("cmppd", |a| {
                a.movapd(xmm2, xmm0)?;
                a.cmppd(xmm2, xmm1, 0)?;
                a.movapd(xmm3, xmm0)?;
                a.cmppd(xmm3, xmm1, 2)?;
                a.cmppd(xmm0, xmm1, 5)?;
                a.cmpsd_3(xmm1, xmm3, 7)?;
                a.pxor(xmm0, xmm2)?;
                a.pxor(xmm1, xmm3)
            }),
            ("cvtpd2ps", |a| a.cvtpd2ps(xmm0, xmm1)),
            ("cvtsd2ss", |a| a.cvtsd2ss(xmm0, xmm1)),
            ("cvtpd2dq", |a| a.cvtpd2dq(xmm0, xmm1)),
            ("cvttpd2dq", |a| a.cvttpd2dq(xmm0, xmm1)),
            ("cvtsd2si", |a| {
                a.cvtsd2si(rax, xmm1)?;
                a.cvttsd2si(ecx, xmm1)
            }),
            ("cvtsi2sd", |a| {
                a.cvtsi2sd(xmm0, rax)?;
                a.cvtsi2sd(xmm1, ecx)
            }),
            ("comisd", |a| a.comisd(xmm0, xmm1)),
            ("ucomisd", |a| a.ucomisd(xmm0, xmm1)),
        ];
        let (vs, vd) = (float_vecs(false), float_vecs(true));
        for (name, op) in ps {
            run_pairs(name, &wrap(op), &vs, &MODES);
        }
        for (name, op) in pd {
            run_pairs(name, &wrap(op), &vd, &MODES);
        }
    }

    #[test]
    fn faults_on_the_jit() {
        use super::super::x87::harness::{jit_fault, on_jit, on_jit_cpu};
        let fill = |c: &mut crate::cpu::Cpu| c.state.fpu.xmm[0] = [0x5a; 16];
        // Misaligned 16-byte operands of the aligned forms: #GP(0), nothing written.
        for code in [
            asm(64, |a| a.movaps(xmm0, xmmword_ptr(rdi + 8))),
            asm(64, |a| a.addps(xmm0, xmmword_ptr(rdi + 4))),
            asm(64, |a| a.pxor(xmm0, xmmword_ptr(rdi + 1))),
            asm(64, |a| a.movdqa(xmmword_ptr(rdi + 1), xmm0)),
        ] {
            let (v, x, _) = jit_fault(&fill, &code);
            assert_eq!((v, x[0]), (vector::GP, [0x5a; 16]));
        }
        // Unaligned MOVUPS and scalar memory operands are fine, also across a page.
        let ok = asm(64, |a| {
            a.mov(rax, 0x1122_3344_5566_7788u64)?;
            a.mov(qword_ptr(rdi + 0xff8), rax)?;
            a.not(rax)?;
            a.mov(qword_ptr(rdi + 0x1000), rax)?;
            a.movups(xmm0, xmmword_ptr(rdi + 0xff8))?;
            a.movdqu(xmmword_ptr(rdi + 0xffc), xmm0)?;
            a.movdqu(xmm1, xmmword_ptr(rdi + 0xffc))?;
            a.movups(xmmword_ptr(rdi), xmm0)?;
            a.movups(xmmword_ptr(rdi + 0x10), xmm1)?;
            a.addss(xmm0, dword_ptr(rdi + 5))
        });
        let mut j = Buf::default();
        on_jit(&ok, &mut j).unwrap();
        let want = from_q(0x1122_3344_5566_7788, !0x1122_3344_5566_7788);
        assert_eq!((&j.0[..0x10], &j.0[0x10..0x20]), (&want[..], &want[..]));
        // Disabled SSE: #UD / #NM.
        let pxor = asm(64, |a| a.pxor(xmm0, xmm1));
        assert_eq!(jit_fault(&|c| c.state.cr4 &= !CR4_OSFXSR, &pxor).0, vector::UD);
        assert_eq!(jit_fault(&|c| c.state.cr0 |= CR0_TS, &pxor).0, vector::NM);
        assert_eq!(jit_fault(&|c| c.state.cr0 |= CR0_EM, &pxor).0, vector::UD);
        // An unmasked exception: #XM, the destination unchanged; masked: the flag.
        let divss = asm(64, |a| a.divss(xmm0, xmm1));
        let one = |c: &mut crate::cpu::Cpu| {
            c.state.cr4 |= CR4_OSXMMEXCPT;
            c.state.fpu.mxcsr = 0x1f80 & !(1 << 9);
            c.state.fpu.xmm[0][..4].copy_from_slice(&1f32.to_bits().to_le_bytes());
        };
        let (v, x, mx) = jit_fault(&one, &divss);
        assert_eq!(v, vector::XM);
        assert_eq!(x[0][..4], 1f32.to_bits().to_le_bytes());
        assert_eq!(mx & 0x3f, F_ZE);
        let store = asm(64, |a| {
            a.divss(xmm0, xmm1)?;
            a.stmxcsr(dword_ptr(rdi))
        });
        let mut b = Buf::default();
        on_jit_cpu(&|c| c.state.fpu.xmm[0][..4].copy_from_slice(&1f32.to_bits().to_le_bytes()), &store, &mut b)
            .unwrap();
        assert_eq!(b.u32(0), 0x1f80 | F_ZE);
    }

    #[test]
    fn faults() {
        let movaps = asm(64, |a| a.movaps(xmm0, xmmword_ptr(rdi + 8)));
        assert_eq!(fault(&mut sse_cpu(), &movaps), Exception::gp0());
        let addps = asm(64, |a| a.addps(xmm0, xmmword_ptr(rdi + 4)));
        assert_eq!(fault(&mut sse_cpu(), &addps), Exception::gp0());
        // Unaligned MOVUPS and scalar memory operands are fine.
        let mut b = Buf::default();
        let ok = asm(64, |a| {
            a.movups(xmm0, xmmword_ptr(rdi + 3))?;
            a.addss(xmm0, dword_ptr(rdi + 5))
        });
        super::super::x87::harness::on_emu(&ok, &mut b).unwrap();
        let mut c = sse_cpu();
        c.state.cr4 &= !CR4_OSFXSR;
        assert_eq!(fault(&mut c, &asm(64, |a| a.pxor(xmm0, xmm1))).vector, vector::UD);
        assert_eq!(fault(&mut c, &asm(64, |a| a.ldmxcsr(dword_ptr(rdi)))).vector, vector::UD);
        let mut c = sse_cpu();
        c.state.cr0 |= CR0_TS;
        assert_eq!(fault(&mut c, &asm(64, |a| a.movdqa(xmm0, xmm1))).vector, vector::NM);
        assert_eq!(fault(&mut c, &asm(64, |a| a.paddb(mm0, mm1))).vector, vector::NM);
        let mut c = sse_cpu();
        c.state.cr0 |= CR0_EM;
        assert_eq!(fault(&mut c, &asm(64, |a| a.movdqa(xmm0, xmm1))).vector, vector::UD);
        // SSE3 is not advertised.
        assert_eq!(fault(&mut sse_cpu(), &asm(64, |a| a.movshdup(xmm0, xmm1))).vector, vector::UD);
        // LDMXCSR: reserved bits.
        let mut c = sse_cpu();
        let mut d = Buf::default();
        d.put(0, &0x1_0000u32.to_le_bytes());
        let e = super::super::x87::harness::on_emu_cpu(&mut c, &asm(64, |a| a.ldmxcsr(dword_ptr(rdi))), &mut d);
        assert_eq!(e.unwrap_err(), Exception::gp0());
        // An unmasked exception: #XM (OSXMMEXCPT) and the destination unchanged.
        let mut c = sse_cpu();
        c.state.cr4 |= CR4_OSXMMEXCPT;
        c.state.fpu.mxcsr = 0x1f80 & !(1 << 9); // ZE unmasked
        c.state.fpu.xmm[0][..4].copy_from_slice(&1f32.to_bits().to_le_bytes());
        assert_eq!(fault(&mut c, &asm(64, |a| a.divss(xmm0, xmm1))).vector, vector::XM);
        assert_eq!(c.state.fpu.xmm[0][..4], 1f32.to_bits().to_le_bytes());
        assert_eq!(c.state.fpu.mxcsr & 0x3f, F_ZE);
    }
}
