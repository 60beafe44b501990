//! Decimal arithmetic adjustments: DAA, DAS, AAA, AAS, AAM, AAD, and the undocumented
//! SALC. All are invalid (#UD) in 64-bit mode.
//!
//! Flags the SDM leaves undefined follow QEMU: DAA/DAS clear OF; AAA/AAS
//! keep SF, ZF, PF, OF; AAM/AAD clear CF, AF, OF.

use iced_x86::{Instruction, Mnemonic};
use quern_core::regs::flags::{AF, CF, STATUS};

use super::{set_cc, Step};
use crate::cpu::{vector, Cpu, Exception, Result};
use crate::flags::{compute, CcKind, CcOp};

/// Whether `ins` belongs to this family (`exec` returns `Some` or an error for it).
pub fn handles(ins: &Instruction) -> bool {
    use Mnemonic::*;
    matches!(ins.mnemonic(), Daa | Das | Aaa | Aas | Aam | Aad | Salc)
}

/// Runs `ins` if it belongs to this family.
pub fn exec(cpu: &mut Cpu, ins: &Instruction) -> Result<Option<Step>> {
    use Mnemonic::*;
    if !handles(ins) {
        return Ok(None);
    }
    if cpu.state.code_bits() == 64 {
        return Err(Exception::ud());
    }
    let f = cpu.state.flags();
    let s = &mut cpu.state;
    let ax = s.gpr[0] & 0xffff;
    let (al, ah) = (ax & 0xff, ax >> 8);
    let set_ax = |s: &mut crate::state::CpuState, v: u64| s.gpr[0] = (s.gpr[0] & !0xffff) | (v & 0xffff);
    let (cf_in, af_in) = (f & CF != 0, f & AF != 0);
    match ins.mnemonic() {
        Daa | Das => {
            let daa = ins.mnemonic() == Daa;
            let mut r = al;
            let mut cf = false;
            let mut af = false;
            if al & 0xf > 9 || af_in {
                // The carry or borrow of the low adjustment; DAA's is always overridden
                // below (its ELSE branch clears CF), DAS's survives.
                cf = cf_in || if daa { al + 6 > 0xff } else { al < 6 };
                r = if daa { r + 6 } else { r.wrapping_sub(6) } & 0xff;
                af = true;
            }
            if al > 0x99 || cf_in {
                r = if daa { r + 0x60 } else { r.wrapping_sub(0x60) } & 0xff;
                cf = true;
            } else if daa {
                cf = false;
            }
            set_ax(s, ah << 8 | r);
            let zsp = compute(CcOp::new(CcKind::Logic, 1), r, 0, 0, 0);
            s.set_flags((f & !STATUS) | zsp | if cf { CF } else { 0 } | if af { AF } else { 0 });
        }
        Aaa | Aas => {
            let adjust = al & 0xf > 9 || af_in;
            let v = match (adjust, ins.mnemonic()) {
                (false, _) => ax,
                (true, Aaa) => ax + 0x106,
                (true, _) => ax.wrapping_sub(6).wrapping_sub(0x100),
            };
            set_ax(s, v & 0xff0f);
            let cfaf = if adjust { CF | AF } else { 0 };
            s.set_flags((f & !(CF | AF)) | cfaf);
        }
        Aam => {
            let base = u64::from(ins.immediate8());
            if base == 0 {
                return Err(Exception::new(vector::DE));
            }
            let r = al % base;
            set_ax(s, (al / base) << 8 | r);
            set_cc(cpu, CcKind::Logic, 1, r, 0, 0);
        }
        Aad => {
            let base = u64::from(ins.immediate8());
            let r = (al + ah * base) & 0xff;
            set_ax(s, r);
            set_cc(cpu, CcKind::Logic, 1, r, 0, 0);
        }
        _ => {
            // SALC: AL = CF ? 0xff : 0; flags unchanged.
            set_ax(s, ah << 8 | if cf_in { 0xff } else { 0 });
        }
    }
    Ok(Some(Step::Next))
}

#[cfg(test)]
mod tests {
    use quern_core::regs::flags::{AF, CF, PF, SF, ZF};

    use crate::interp::testutil::{cpu, run, set_status};

    /// Runs a one-byte (or immediate) instruction in 32-bit mode on AX and flags.
    fn go(code: &[u8], ax: u64, f: u64) -> (u64, u64) {
        let mut c = cpu(32);
        c.state.gpr[0] = 0xabcd_0000 | ax;
        set_status(&mut c, f);
        run(&mut c, code).unwrap();
        assert_eq!(c.state.gpr[0] >> 16, 0xabcd);
        (c.state.gpr[0] & 0xffff, c.state.flags() & (CF | AF | ZF | SF | PF))
    }

    /// The SDM's pseudo-code for DAA/DAS, written independently of the implementation.
    fn reference_daa(al: u8, cf: bool, af: bool, sub: bool) -> (u8, bool, bool) {
        let old_al = al;
        let mut al = al;
        let mut ncf = false;
        let mut naf = false;
        if (al & 0x0f) > 9 || af {
            let (v, carry) = if sub { al.overflowing_sub(6) } else { al.overflowing_add(6) };
            al = v;
            ncf = cf || carry;
            naf = true;
        }
        if old_al > 0x99 || cf {
            al = if sub { al.wrapping_sub(0x60) } else { al.wrapping_add(0x60) };
            ncf = true;
        } else if !sub {
            ncf = false;
        }
        (al, ncf, naf)
    }

    #[test]
    fn daa_das_follow_the_sdm() {
        for al in 0..=255u8 {
            for (cf, af) in [(false, false), (true, false), (false, true), (true, true)] {
                let f = if cf { CF } else { 0 } | if af { AF } else { 0 };
                for (code, sub) in [(0x27u8, false), (0x2f, true)] {
                    let (ax, nf) = go(&[code], 0x1200 | u64::from(al), f);
                    let (want, wcf, waf) = reference_daa(al, cf, af, sub);
                    assert_eq!(ax, 0x1200 | u64::from(want), "{code:#x} al={al:#x} cf={cf} af={af}");
                    assert_eq!(nf & CF != 0, wcf, "{code:#x} CF al={al:#x} cf={cf} af={af}");
                    assert_eq!(nf & AF != 0, waf, "{code:#x} AF al={al:#x} cf={cf} af={af}");
                    assert_eq!(nf & ZF != 0, want == 0);
                    assert_eq!(nf & SF != 0, want & 0x80 != 0);
                }
            }
        }
        // Worked examples from the SDM: 0x79 + 0x35 = 0xae → DAA → 0x14, CF.
        assert_eq!(go(&[0x27], 0xae, 0), (0x14, CF | AF | PF));
        // 0x35 - 0x47 = 0xee (CF, AF) → DAS → 0x88, CF.
        assert_eq!(go(&[0x2f], 0xee, CF | AF).0, 0x88);
    }

    #[test]
    fn ascii_adjustments() {
        // AAA: 0x0f + AF → AX + 0x106, low nibble.
        assert_eq!(go(&[0x37], 0x010f, 0).0, 0x0205);
        assert_eq!(go(&[0x37], 0x01fa, 0).0, 0x0300, "AL + 6 carries into AH");
        assert_eq!(go(&[0x37], 0x0105, 0), (0x0105, 0));
        assert_eq!(go(&[0x37], 0x0102, AF).1 & (CF | AF), CF | AF);
        // AAS: 0x02 with AF → AX - 6, AH - 1.
        assert_eq!(go(&[0x3f], 0x0502, AF).0, 0x030c);
        assert_eq!(go(&[0x3f], 0x050b, 0).0, 0x0405);
        // AAM 10: 0x3f = 63 → AH 6, AL 3.
        assert_eq!(go(&[0xd4, 0x0a], 0x003f, 0), (0x0603, PF));
        // AAD 10: AH 6, AL 3 → AL 63.
        assert_eq!(go(&[0xd5, 0x0a], 0x0603, 0), (0x003f, PF));
        assert_eq!(go(&[0xd5, 0x10], 0x0000, 0), (0, ZF | PF));
        // SALC.
        assert_eq!(go(&[0xd6], 0x1234, CF), (0x12ff, CF));
        assert_eq!(go(&[0xd6], 0x1234, 0).0, 0x1200);
    }

    #[test]
    fn aam_zero_faults_and_64_bit_mode_is_ud() {
        let mut c = cpu(16);
        let e = run(&mut c, &[0xd4, 0x00]).unwrap_err();
        assert_eq!(e.vector, crate::cpu::vector::DE);
        let mut c = cpu(64);
        let mut d = iced_x86::Decoder::with_ip(32, &[0x27], 0x1000, iced_x86::DecoderOptions::NONE);
        let ins = d.decode();
        assert_eq!(super::exec(&mut c, &ins), Err(crate::cpu::Exception::ud()));
    }
}
