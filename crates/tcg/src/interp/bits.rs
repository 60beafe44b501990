//! Bit instructions: BT, BTS, BTR, BTC, BSF, BSR, TZCNT, LZCNT, POPCNT, BSWAP.
//!
//! Flags the SDM leaves undefined keep their previous values.

use iced_x86::{Instruction, Mnemonic, OpKind};
use quern_core::regs::flags::{CF, STATUS, ZF};

use super::{addr_mask, Operands, Step};
use crate::cpu::{Cpu, Result};
use crate::flags::{mask, Width};
use crate::translate::{address_bits, seg_index};

/// Whether `ins` belongs to this family (`exec` returns `Some` or an error for it).
pub fn handles(ins: &Instruction) -> bool {
    use Mnemonic::*;
    matches!(ins.mnemonic(), Bt | Bts | Btr | Btc | Bsf | Bsr | Tzcnt | Lzcnt | Popcnt | Bswap)
}

/// Runs `ins` if it belongs to this family.
pub fn exec(cpu: &mut Cpu, ins: &Instruction) -> Result<Option<Step>> {
    use Mnemonic::*;
    match ins.mnemonic() {
        Bt | Bts | Btr | Btc => bit_test(cpu, ins)?,
        Bsf | Bsr | Tzcnt | Lzcnt | Popcnt => scan(cpu, ins)?,
        Bswap => {
            let mut o = Operands { cpu, ins };
            let v = o.read(0)?;
            let r = match o.width(0) {
                // Undefined in the SDM; real CPUs clear the low word.
                2 => 0,
                4 => u64::from((v as u32).swap_bytes()),
                _ => v.swap_bytes(),
            };
            o.write(0, r)?;
        }
        _ => return Ok(None),
    }
    Ok(Some(Step::Next))
}

/// Sets the status flags in `set` to the bits of `v`, keeping the others.
pub(super) fn update_flags(cpu: &mut Cpu, set: u64, v: u64) {
    let f = cpu.state.flags();
    cpu.state.set_flags((f & !set) | (v & set));
}

/// The linear address of the operand-sized unit of memory that holds the bit a BT*
/// instruction with a memory operand selects: a register bit offset is signed and may
/// select a bit outside the operand.
pub(super) fn bit_unit_linear(o: &Operands, offset: u64) -> u64 {
    let ins = o.ins;
    if ins.op1_kind() != OpKind::Register {
        return o.linear();
    }
    let w = o.width(0);
    let bits = u64::from(w) * 8;
    let sh = 64 - bits as u32;
    let off = ((offset << sh) as i64) >> sh;
    let units = off >> bits.trailing_zeros();
    let ea = o.offset().wrapping_add((units * i64::from(w)) as u64);
    let ea = ea & addr_mask(address_bits(ins, o.cpu.state.code_bits()));
    o.seg_linear(seg_index(ins.memory_segment()), ea)
}

/// BT/BTS/BTR/BTC: CF = the selected bit, which BTS/BTR/BTC then set, clear or flip.
fn bit_test(cpu: &mut Cpu, ins: &Instruction) -> Result<()> {
    let mut o = Operands { cpu, ins };
    let w = o.width(0);
    let bits = u64::from(w) * 8;
    let offset = o.read(1)?;
    let mem = (ins.op0_kind() == OpKind::Memory).then(|| bit_unit_linear(&o, offset));
    let bit = offset & (bits - 1);
    let v = match mem {
        Some(a) => o.cpu.read_n(a, w)?,
        None => o.read(0)?,
    };
    let cf = (v >> bit) & 1;
    let new = match ins.mnemonic() {
        Mnemonic::Bts => v | 1 << bit,
        Mnemonic::Btr => v & !(1 << bit),
        Mnemonic::Btc => v ^ 1 << bit,
        _ => v,
    };
    if ins.mnemonic() != Mnemonic::Bt {
        match mem {
            Some(a) => o.cpu.write_n(a, new, w)?,
            None => o.write(0, new)?,
        }
    }
    update_flags(cpu, CF, cf);
    Ok(())
}

/// BSF, BSR (ZF = source is 0, destination then unchanged), TZCNT, LZCNT (CF = source
/// is 0, ZF = result is 0), POPCNT (ZF = source is 0, the other five cleared).
fn scan(cpu: &mut Cpu, ins: &Instruction) -> Result<()> {
    let mut o = Operands { cpu, ins };
    let w: Width = o.width(0);
    let bits = u32::from(w) * 8;
    let src = o.read(1)? & mask(w);
    let zf = if src == 0 { ZF } else { 0 };
    match ins.mnemonic() {
        Mnemonic::Bsf | Mnemonic::Bsr => {
            if src != 0 {
                let r = if ins.mnemonic() == Mnemonic::Bsf { src.trailing_zeros() } else { 63 - src.leading_zeros() };
                o.write(0, u64::from(r))?;
            }
            update_flags(cpu, ZF, zf);
        }
        Mnemonic::Tzcnt | Mnemonic::Lzcnt => {
            let r = if src == 0 {
                bits
            } else if ins.mnemonic() == Mnemonic::Tzcnt {
                src.trailing_zeros()
            } else {
                src.leading_zeros() - (64 - bits)
            };
            o.write(0, u64::from(r))?;
            let cf = if src == 0 { CF } else { 0 };
            update_flags(cpu, CF | ZF, cf | if r == 0 { ZF } else { 0 });
        }
        _ => {
            o.write(0, u64::from(src.count_ones()))?;
            update_flags(cpu, STATUS, zf);
        }
    }
    Ok(())
}

#[cfg(test)]
// The comparisons with the host CPU run on x86-64 hosts only.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports, dead_code))]
mod tests {
    use iced_x86::code_asm::*;
    use quern_core::regs::flags::{CF, STATUS, ZF};

    #[cfg(target_arch = "x86_64")]
    use crate::interp::testutil::host;
    use crate::interp::testutil::{asm, cpu, emu, peek, poke, run, FLAG_INPUTS, SAMPLES};

    type HostFn = fn(u64, u64, u64, u64) -> [u64; 4];

    #[cfg(target_arch = "x86_64")]
    /// Runs the instruction with RCX = `c`, RDX = `d` for every sample pair; compares
    /// all three registers and the flags in `flag_mask`.
    fn compare(name: &str, host: HostFn, code: Vec<u8>, flag_mask: u64) {
        for &c in SAMPLES.iter().chain(&[0x5555_5555_5555_5555, 0x0010_0000_0000_0000]) {
            for &d in SAMPLES.iter().chain(&[0x0f00, 0x2_0000_0000, 0x40, 0x60, 0x3f]) {
                for &f in &FLAG_INPUTS {
                    let got = emu(&code, 0x1234, c, d, f).unwrap();
                    let want = host(0x1234, c, d, f);
                    let (mut g, mut h) = (got, want);
                    g[3] &= flag_mask;
                    h[3] &= flag_mask;
                    assert_eq!(g, h, "{name}: rcx={c:#x} rdx={d:#x} flags={f:#x}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn scans_match_the_host() {
        compare("bsf cx", host!("bsf cx, dx"), asm(64, |x| x.bsf(cx, dx)), ZF);
        compare("bsf ecx", host!("bsf ecx, edx"), asm(64, |x| x.bsf(ecx, edx)), ZF);
        compare("bsf rcx", host!("bsf rcx, rdx"), asm(64, |x| x.bsf(rcx, rdx)), ZF);
        compare("bsr cx", host!("bsr cx, dx"), asm(64, |x| x.bsr(cx, dx)), ZF);
        compare("bsr ecx", host!("bsr ecx, edx"), asm(64, |x| x.bsr(ecx, edx)), ZF);
        compare("bsr rcx", host!("bsr rcx, rdx"), asm(64, |x| x.bsr(rcx, rdx)), ZF);
        if std::is_x86_feature_detected!("bmi1") {
            compare("tzcnt cx", host!("tzcnt cx, dx"), asm(64, |x| x.tzcnt(cx, dx)), CF | ZF);
            compare("tzcnt ecx", host!("tzcnt ecx, edx"), asm(64, |x| x.tzcnt(ecx, edx)), CF | ZF);
            compare("tzcnt rcx", host!("tzcnt rcx, rdx"), asm(64, |x| x.tzcnt(rcx, rdx)), CF | ZF);
        }
        if std::is_x86_feature_detected!("lzcnt") {
            compare("lzcnt cx", host!("lzcnt cx, dx"), asm(64, |x| x.lzcnt(cx, dx)), CF | ZF);
            compare("lzcnt ecx", host!("lzcnt ecx, edx"), asm(64, |x| x.lzcnt(ecx, edx)), CF | ZF);
            compare("lzcnt rcx", host!("lzcnt rcx, rdx"), asm(64, |x| x.lzcnt(rcx, rdx)), CF | ZF);
        }
        if std::is_x86_feature_detected!("popcnt") {
            compare("popcnt cx", host!("popcnt cx, dx"), asm(64, |x| x.popcnt(cx, dx)), STATUS);
            compare("popcnt ecx", host!("popcnt ecx, edx"), asm(64, |x| x.popcnt(ecx, edx)), STATUS);
            compare("popcnt rcx", host!("popcnt rcx, rdx"), asm(64, |x| x.popcnt(rcx, rdx)), STATUS);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bit_tests_on_registers_match_the_host() {
        // Defined: CF; ZF is documented as unaffected.
        compare("bt cx", host!("bt cx, dx"), asm(64, |x| x.bt(cx, dx)), CF | ZF);
        compare("bts ecx", host!("bts ecx, edx"), asm(64, |x| x.bts(ecx, edx)), CF | ZF);
        compare("btr rcx", host!("btr rcx, rdx"), asm(64, |x| x.btr(rcx, rdx)), CF | ZF);
        compare("btc ecx", host!("btc ecx, edx"), asm(64, |x| x.btc(ecx, edx)), CF | ZF);
        compare("btc rcx,imm", host!("btc rcx, 0x45"), asm(64, |x| x.btc(rcx, 0x45)), CF | ZF);
        compare("bts cx,imm", host!("bts cx, 0x13"), asm(64, |x| x.bts(cx, 0x13)), CF | ZF);
        compare("bswap ecx", host!("bswap ecx"), asm(64, |x| x.bswap(ecx)), 0);
        compare("bswap rcx", host!("bswap rcx"), asm(64, |x| x.bswap(rcx)), 0);
    }

    #[test]
    fn bit_offsets_reach_outside_a_memory_operand() {
        let mut c = cpu(64);
        poke(&mut c, 0x2000, &[0u8; 32]);
        c.state.gpr[3] = 0x2010;
        // bts [rbx], rcx with rcx = 35: byte 0x2014, bit 3.
        c.state.gpr[1] = 35;
        run(&mut c, &asm(64, |x| x.bts(dword_ptr(rbx), ecx))).unwrap();
        assert_eq!(peek(&mut c, 0x2014, 1), [8]);
        assert_eq!(c.state.flags() & CF, 0);
        // Negative: rcx = -1 → the dword below, bit 31 (byte 0x200f, bit 7).
        c.state.rip = 0x1000;
        c.state.gpr[1] = u64::MAX;
        run(&mut c, &asm(64, |x| x.bts(qword_ptr(rbx), rcx))).unwrap();
        assert_eq!(peek(&mut c, 0x200f, 1), [0x80]);
        c.state.rip = 0x1000;
        run(&mut c, &asm(64, |x| x.bt(word_ptr(rbx), cx))).unwrap();
        assert_eq!(c.state.flags() & CF, CF, "cx = -1: bit 15 of the word below");
        // 16-bit offsets are signed at 16 bits: 0xfff0 = -16 → the word below, bit 0.
        c.state.rip = 0x1000;
        c.state.gpr[1] = 0xffff_fff0;
        run(&mut c, &asm(64, |x| x.btc(word_ptr(rbx), cx))).unwrap();
        assert_eq!(peek(&mut c, 0x200e, 1), [1]);
        // An immediate offset stays inside the operand.
        c.state.rip = 0x1000;
        run(&mut c, &asm(64, |x| x.btr(dword_ptr(rbx + 4), 32 + 3))).unwrap();
        assert_eq!(peek(&mut c, 0x2014, 1), [0]);
        assert_eq!(c.state.flags() & CF, CF);
    }

    #[test]
    fn bswap16_clears_the_low_word() {
        let mut c = cpu(32);
        c.state.gpr[1] = 0x1234_5678;
        run(&mut c, &[0x66, 0x0f, 0xc9]).unwrap(); // bswap cx
        assert_eq!(c.state.gpr[1], 0x1234_0000);
    }
}
