//! MUL, IMUL (one-, two- and three-operand forms), DIV, IDIV at 8, 16, 32 and 64 bits.
//!
//! MUL and IMUL record a [`CcKind::Mul`] lazy-flag result: CF = OF = "the product did
//! not fit" (the high half is not zero, or not the sign extension of the low half); SF,
//! ZF, PF follow the low half and AF is 0 (all four undefined per the SDM). DIV and
//! IDIV raise #DE on a zero divisor or a quotient that does not fit, before any
//! register changes, and leave the flags alone (undefined per the SDM).

use iced_x86::{Instruction, Mnemonic, Register};

use super::{read_reg, set_cc, write_reg, Operands, Step};
use crate::cpu::{vector, Cpu, Exception, Result};
use crate::flags::{mask, CcKind, Width};

/// Whether `ins` is a multiply or divide (`exec` returns `Some` or an error for it).
pub fn handles(ins: &Instruction) -> bool {
    use Mnemonic::*;
    matches!(ins.mnemonic(), Mul | Imul | Div | Idiv)
}

/// Runs `ins` if it is a multiply or divide.
pub fn exec(cpu: &mut Cpu, ins: &Instruction) -> Result<Option<Step>> {
    use Mnemonic::*;
    match ins.mnemonic() {
        Mul | Imul if ins.op_count() == 1 => widening(cpu, ins)?,
        Imul => truncating(cpu, ins)?,
        Div | Idiv => divide(cpu, ins)?,
        _ => return Ok(None),
    }
    Ok(Some(Step::Next))
}

/// `v`'s low `w` bytes, sign-extended.
fn sext(v: u64, w: Width) -> i128 {
    let sh = 64 - u32::from(w) * 8;
    i128::from(((v << sh) as i64) >> sh)
}

/// The accumulator and its high-half partner at width `w` (AL/AH as AX for bytes).
fn acc_regs(w: Width) -> (Register, Register) {
    match w {
        1 => (Register::AL, Register::AH),
        2 => (Register::AX, Register::DX),
        4 => (Register::EAX, Register::EDX),
        _ => (Register::RAX, Register::RDX),
    }
}

/// Writes a double-width result: AX for bytes, rDX:rAX otherwise.
fn write_pair(cpu: &mut Cpu, w: Width, lo: u64, hi: u64) {
    if w == 1 {
        write_reg(cpu, Register::AX, (hi & 0xff) << 8 | (lo & 0xff));
    } else {
        let (a, d) = acc_regs(w);
        write_reg(cpu, a, lo);
        write_reg(cpu, d, hi);
    }
}

/// One-operand MUL/IMUL: rDX:rAX (AX) = rAX * r/m.
fn widening(cpu: &mut Cpu, ins: &Instruction) -> Result<()> {
    let mut o = Operands { cpu, ins };
    let w = o.width(0);
    let bits = u32::from(w) * 8;
    let m = mask(w);
    let src = o.read(0)?;
    let a = read_reg(cpu, acc_regs(w).0);
    let (lo, hi, overflow) = if ins.mnemonic() == Mnemonic::Mul {
        let p = u128::from(a) * u128::from(src);
        let hi = (p >> bits) as u64 & m;
        (p as u64 & m, hi, hi != 0)
    } else {
        // |product| < 2^126 for 64-bit factors: no i128 overflow.
        let p = sext(a, w) * sext(src, w);
        let lo = p as u64 & m;
        (lo, (p >> bits) as u64 & m, p != sext(lo, w))
    };
    write_pair(cpu, w, lo, hi);
    set_cc(cpu, CcKind::Mul, w, lo, u64::from(overflow), 0);
    Ok(())
}

/// Two- and three-operand IMUL: reg = reg * r/m, or reg = r/m * imm; truncated.
fn truncating(cpu: &mut Cpu, ins: &Instruction) -> Result<()> {
    let mut o = Operands { cpu, ins };
    let w = o.width(0);
    let (x, y) = if ins.op_count() == 3 { (1, 2) } else { (0, 1) };
    let a = o.read(x)?;
    let b = o.read(y)?;
    let p = sext(a, w) * sext(b, w);
    let lo = p as u64 & mask(w);
    o.write(0, lo)?;
    set_cc(cpu, CcKind::Mul, w, lo, u64::from(p != sext(lo, w)), 0);
    Ok(())
}

/// DIV/IDIV: rAX = rDX:rAX / r/m, rDX = remainder (AL, AH from AX for bytes).
fn divide(cpu: &mut Cpu, ins: &Instruction) -> Result<()> {
    let mut o = Operands { cpu, ins };
    let w = o.width(0);
    let bits = u32::from(w) * 8;
    let m = mask(w);
    let divisor = o.read(0)?;
    let de = Exception::new(vector::DE);
    if divisor == 0 {
        return Err(de);
    }
    let dividend: u128 = if w == 1 {
        u128::from(cpu.state.gpr[0] & 0xffff)
    } else {
        let (a, d) = acc_regs(w);
        u128::from(read_reg(cpu, d)) << bits | u128::from(read_reg(cpu, a))
    };
    let (q, r) = if ins.mnemonic() == Mnemonic::Div {
        let q = dividend / u128::from(divisor);
        if q > u128::from(m) {
            return Err(de);
        }
        (q as u64, (dividend % u128::from(divisor)) as u64)
    } else {
        let sh = 128 - 2 * bits;
        let n = ((dividend << sh) as i128) >> sh;
        let d = sext(divisor, w);
        // checked: i128::MIN / -1 (a 128-bit dividend) overflows even in i128.
        let (Some(q), Some(r)) = (n.checked_div(d), n.checked_rem(d)) else { return Err(de) };
        let lim = 1i128 << (bits - 1);
        if q < -lim || q >= lim {
            return Err(de);
        }
        (q as u64 & m, r as u64 & m)
    };
    write_pair(cpu, w, q, r);
    Ok(())
}

#[cfg(test)]
// The comparisons with the host CPU run on x86-64 hosts only.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports, dead_code))]
mod tests {
    use iced_x86::code_asm::*;
    use quern_core::regs::flags::{CF, OF};

    #[cfg(target_arch = "x86_64")]
    use crate::interp::testutil::host;
    use crate::interp::testutil::{asm, emu, FLAG_INPUTS, SAMPLES};

    type HostFn = fn(u64, u64, u64, u64) -> [u64; 4];

    #[cfg(target_arch = "x86_64")]
    /// Compares the software CPU with the host on every sample pair.
    /// `flag_mask`: the flags that are defined; `div`: skip inputs that fault.
    fn compare(name: &str, host: HostFn, code: Vec<u8>, flag_mask: u64, div: bool) -> usize {
        let mut faults = 0;
        for &a in &SAMPLES {
            for &c in &SAMPLES {
                for d in [0u64, 1, 0xffff_ffff_ffff_ffff, 0x1234_5678] {
                    for &f in &FLAG_INPUTS {
                        let got = match emu(&code, a, c, d, f) {
                            Ok(v) => v,
                            Err(e) => {
                                assert!(div, "{name}: unexpected {e:?} for a={a:#x} c={c:#x} d={d:#x}");
                                assert_eq!(e.vector, crate::cpu::vector::DE);
                                faults += 1;
                                continue;
                            }
                        };
                        let want = host(a, c, d, f);
                        let (mut g, mut h) = (got, want);
                        g[3] &= flag_mask;
                        h[3] &= flag_mask;
                        if div {
                            // Flags are undefined after DIV; the software CPU keeps them.
                            g[3] = 0;
                            h[3] = 0;
                        }
                        assert_eq!(g, h, "{name}: a={a:#x} c={c:#x} d={d:#x} flags={f:#x}");
                    }
                }
            }
        }
        faults
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn mul_and_imul_match_the_host() {
        let fl = CF | OF;
        compare("mul cl", host!("mul cl"), asm(64, |x| x.mul(cl)), fl, false);
        compare("mul cx", host!("mul cx"), asm(64, |x| x.mul(cx)), fl, false);
        compare("mul ecx", host!("mul ecx"), asm(64, |x| x.mul(ecx)), fl, false);
        compare("mul rcx", host!("mul rcx"), asm(64, |x| x.mul(rcx)), fl, false);
        compare("imul cl", host!("imul cl"), asm(64, |x| x.imul(cl)), fl, false);
        compare("imul cx", host!("imul cx"), asm(64, |x| x.imul(cx)), fl, false);
        compare("imul ecx", host!("imul ecx"), asm(64, |x| x.imul(ecx)), fl, false);
        compare("imul rcx", host!("imul rcx"), asm(64, |x| x.imul(rcx)), fl, false);
        compare("imul cx,dx", host!("imul cx, dx"), asm(64, |x| x.imul_2(cx, dx)), fl, false);
        compare("imul ecx,edx", host!("imul ecx, edx"), asm(64, |x| x.imul_2(ecx, edx)), fl, false);
        compare("imul rcx,rdx", host!("imul rcx, rdx"), asm(64, |x| x.imul_2(rcx, rdx)), fl, false);
        compare("imul ax,dx,-3", host!("imul ax, dx, -3"), asm(64, |x| x.imul_3(ax, dx, -3)), fl, false);
        compare(
            "imul eax,edx,imm32",
            host!("imul eax, edx, 0x12345"),
            asm(64, |x| x.imul_3(eax, edx, 0x12345)),
            fl,
            false,
        );
        compare("imul rax,rdx,imm8", host!("imul rax, rdx, 0x7f"), asm(64, |x| x.imul_3(rax, rdx, 0x7f)), fl, false);
        compare(
            "imul rax,rdx,-imm32",
            host!("imul rax, rdx, -0x12345678"),
            asm(64, |x| x.imul_3(rax, rdx, -0x12345678)),
            fl,
            false,
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn div_and_idiv_match_the_host_and_fault() {
        for (name, h, code) in [
            ("div cl", host!("div cl"), asm(64, |x| x.div(cl))),
            ("div cx", host!("div cx"), asm(64, |x| x.div(cx))),
            ("div ecx", host!("div ecx"), asm(64, |x| x.div(ecx))),
            ("div rcx", host!("div rcx"), asm(64, |x| x.div(rcx))),
            ("idiv cl", host!("idiv cl"), asm(64, |x| x.idiv(cl))),
            ("idiv cx", host!("idiv cx"), asm(64, |x| x.idiv(cx))),
            ("idiv ecx", host!("idiv ecx"), asm(64, |x| x.idiv(ecx))),
            ("idiv rcx", host!("idiv rcx"), asm(64, |x| x.idiv(rcx))),
        ] {
            let faults = compare(name, h, code, 0, true);
            assert!(faults > 0, "{name}: no #DE among the samples");
        }
    }

    #[test]
    fn divide_errors_leave_registers_alone() {
        let cases: [(Vec<u8>, u64, u64, u64); 6] = [
            (asm(64, |x| x.div(rcx)), 5, 0, 0),                             // by zero
            (asm(64, |x| x.div(ecx)), 0, 2, 2),                             // quotient 2^32
            (asm(64, |x| x.idiv(rcx)), 1 << 63, u64::MAX, u64::MAX),        // MIN / -1
            (asm(64, |x| x.idiv(ecx)), 0x8000_0000, u64::MAX, 0xffff_ffff), // MIN / -1
            (asm(64, |x| x.idiv(cl)), 0x80, 0xff, 0),                       // 128 / -1 = -128 fits
            (asm(64, |x| x.idiv(cl)), 0x8000, 0xff, 0),                     // -32768 / -1
        ];
        for (i, (code, a, c, d)) in cases.iter().enumerate() {
            let r = emu(code, *a, *c, *d, 0);
            if i == 4 {
                assert_eq!(r.unwrap()[0] & 0xffff, 0x0080, "0x80 / -1 = -128, remainder 0");
                continue;
            }
            let e = r.unwrap_err();
            assert_eq!(e.vector, crate::cpu::vector::DE, "case {i}");
        }
        // The register state is untouched after a fault.
        let mut c = crate::interp::testutil::cpu(64);
        c.state.gpr[0] = 0x1111;
        c.state.gpr[2] = 0x2222;
        let e = crate::interp::testutil::run(&mut c, &asm(64, |x| x.div(rcx))).unwrap_err();
        assert_eq!(e.vector, crate::cpu::vector::DE);
        assert_eq!((c.state.gpr[0], c.state.gpr[2], c.state.rip), (0x1111, 0x2222, 0x1000));
    }

    #[test]
    fn memory_operands_and_16_bit_mode() {
        let mut c = crate::interp::testutil::cpu(16);
        crate::interp::testutil::poke(&mut c, 0x500, &0xfffeu16.to_le_bytes());
        c.state.gpr[0] = 0x1234_0003;
        c.state.gpr[2] = 0x5678_0000;
        c.state.gpr[3] = 0x500;
        crate::interp::testutil::run(&mut c, &asm(16, |x| x.imul(word_ptr(bx)))).unwrap();
        // 3 * -2 = -6: DX:AX = ffff:fffa, fits (CF=OF=0); upper halves kept.
        assert_eq!(c.state.gpr[0], 0x1234_fffa);
        assert_eq!(c.state.gpr[2], 0x5678_ffff);
        assert_eq!(c.state.flags() & (CF | OF), 0);
    }
}
