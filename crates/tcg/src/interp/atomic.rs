//! The exchanges between registers: XCHG, XADD and CMPXCHG with two register
//! operands. Their memory forms, and CMPXCHG8B/16B, are read-modify-writes of memory
//! and run as host atomics in [`super::locked`].

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::{read_reg, set_cc, write_reg, Operands, Step};
use crate::cpu::{Cpu, Result};
use crate::flags::CcKind;

/// Whether `ins` belongs to this family (`exec` returns `Some` or an error for it).
pub fn handles(ins: &Instruction) -> bool {
    use Mnemonic::*;
    matches!(ins.mnemonic(), Xchg | Xadd | Cmpxchg) && (0..ins.op_count()).all(|i| ins.op_kind(i) == OpKind::Register)
}

/// Runs `ins` if it belongs to this family.
pub fn exec(cpu: &mut Cpu, ins: &Instruction) -> Result<Option<Step>> {
    use Mnemonic::*;
    if !handles(ins) {
        return Ok(None);
    }
    let mut o = Operands { cpu, ins };
    let w = o.width(0);
    let dst = o.read(0)?;
    let src = o.read(1)?;
    match ins.mnemonic() {
        Xchg => {
            o.write(0, src)?;
            o.write(1, dst)?;
        }
        Xadd => {
            // TEMP = SRC + DEST; SRC = DEST; DEST = TEMP.
            let sum = dst.wrapping_add(src);
            o.write(1, dst)?;
            o.write(0, sum)?;
            set_cc(cpu, CcKind::Add, w, sum, src, 0);
        }
        _ => {
            let acc = match w {
                1 => Register::AL,
                2 => Register::AX,
                4 => Register::EAX,
                _ => Register::RAX,
            };
            let a = read_reg(o.cpu, acc);
            // The destination is written only when equal, the accumulator only when
            // not (neither is zero-extended otherwise).
            if a == dst {
                o.write(0, src)?;
            } else {
                write_reg(cpu, acc, dst);
            }
            set_cc(cpu, CcKind::Sub, w, a.wrapping_sub(dst), dst, 0);
        }
    }
    Ok(Some(Step::Next))
}

#[cfg(test)]
// The comparisons with the host CPU run on x86-64 hosts only.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports, dead_code))]
mod tests {
    use iced_x86::code_asm::*;
    use quern_core::regs::flags::{CF, STATUS, ZF};

    use crate::cpu::Exception;
    #[cfg(target_arch = "x86_64")]
    use crate::interp::testutil::host;
    use crate::interp::testutil::{asm, cpu, emu, peek, poke, run, FLAG_INPUTS, SAMPLES};

    type HostFn = fn(u64, u64, u64, u64) -> [u64; 4];

    #[cfg(target_arch = "x86_64")]
    fn compare(name: &str, host: HostFn, code: Vec<u8>) {
        for &a in &SAMPLES {
            for &c in &SAMPLES {
                for d in [0u64, 0x7f, 0xffff_ffff_ffff_ffff, a, c] {
                    for &f in &FLAG_INPUTS {
                        let got = emu(&code, a, c, d, f).unwrap();
                        let want = host(a, c, d, f);
                        assert_eq!(got, want, "{name}: rax={a:#x} rcx={c:#x} rdx={d:#x} flags={f:#x}");
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn register_forms_match_the_host() {
        compare("cmpxchg cl,dl", host!("cmpxchg cl, dl"), asm(64, |x| x.cmpxchg(cl, dl)));
        compare("cmpxchg cx,dx", host!("cmpxchg cx, dx"), asm(64, |x| x.cmpxchg(cx, dx)));
        compare("cmpxchg ecx,edx", host!("cmpxchg ecx, edx"), asm(64, |x| x.cmpxchg(ecx, edx)));
        compare("cmpxchg rcx,rdx", host!("cmpxchg rcx, rdx"), asm(64, |x| x.cmpxchg(rcx, rdx)));
        compare("xadd cl,dl", host!("xadd cl, dl"), asm(64, |x| x.xadd(cl, dl)));
        compare("xadd cx,dx", host!("xadd cx, dx"), asm(64, |x| x.xadd(cx, dx)));
        compare("xadd ecx,edx", host!("xadd ecx, edx"), asm(64, |x| x.xadd(ecx, edx)));
        compare("xadd rcx,rdx", host!("xadd rcx, rdx"), asm(64, |x| x.xadd(rcx, rdx)));
        compare("xadd ecx,ecx", host!("xadd ecx, ecx"), asm(64, |x| x.xadd(ecx, ecx)));
    }

    /// The memory forms (run by `locked`, whose family the interpreter tries first).
    #[test]
    fn memory_forms() {
        let mut c = cpu(64);
        poke(&mut c, 0x3000, &0x1122_3344_5566_7788u64.to_le_bytes());
        c.state.gpr[3] = 0x3000;
        // xchg [rbx], ecx
        c.state.gpr[1] = 0xffff_ffff_aaaa_bbbb;
        run(&mut c, &asm(64, |x| x.xchg(dword_ptr(rbx), ecx))).unwrap();
        assert_eq!(c.state.gpr[1], 0x5566_7788);
        assert_eq!(peek(&mut c, 0x3000, 8), 0x1122_3344_aaaa_bbbbu64.to_le_bytes());
        // lock xadd [rbx], cx
        c.state.rip = 0x1000;
        c.state.gpr[1] = 0x4445;
        run(&mut c, &asm(64, |x| x.lock().xadd(word_ptr(rbx), cx))).unwrap();
        assert_eq!(c.state.gpr[1] & 0xffff, 0xbbbb);
        assert_eq!(peek(&mut c, 0x3000, 2), [0x00, 0x00]);
        assert_eq!(c.state.flags() & (CF | ZF), CF | ZF);
        // cmpxchg [rbx], edx: fails (EAX differs) then succeeds.
        c.state.rip = 0x1000;
        c.state.gpr[0] = 0xdead_beef_0000_0001;
        c.state.gpr[2] = 0x77;
        run(&mut c, &asm(64, |x| x.cmpxchg(dword_ptr(rbx), edx))).unwrap();
        assert_eq!(c.state.gpr[0], 0xaaaa_0000, "EAX loaded, zero-extended");
        assert_eq!(c.state.flags() & ZF, 0);
        c.state.rip = 0x1000;
        run(&mut c, &asm(64, |x| x.cmpxchg(dword_ptr(rbx), edx))).unwrap();
        assert_eq!(peek(&mut c, 0x3000, 4), 0x77u32.to_le_bytes());
        assert_eq!(c.state.flags() & ZF, ZF);
    }

    #[test]
    fn cmpxchg8b_and_16b() {
        let mut c = cpu(64);
        poke(&mut c, 0x4000, &0x0123_4567_89ab_cdefu64.to_le_bytes());
        poke(&mut c, 0x4008, &0xfedc_ba98_7654_3210u64.to_le_bytes());
        c.state.gpr[6] = 0x4000;
        // Mismatch: EDX:EAX loaded.
        c.state.gpr[0] = 0xffff_ffff_0000_0000;
        c.state.gpr[2] = 0xffff_ffff_0000_0000;
        c.state.gpr[3] = 0x1111_1111;
        c.state.gpr[1] = 0x2222_2222;
        run(&mut c, &asm(64, |x| x.cmpxchg8b(qword_ptr(rsi)))).unwrap();
        assert_eq!((c.state.gpr[0], c.state.gpr[2]), (0x89ab_cdef, 0x0123_4567));
        assert_eq!(c.state.flags() & ZF, 0);
        // Match: ECX:EBX stored, RAX/RDX untouched.
        c.state.rip = 0x1000;
        c.state.gpr[0] |= 0x5555_0000_0000_0000;
        run(&mut c, &asm(64, |x| x.cmpxchg8b(qword_ptr(rsi)))).unwrap();
        assert_eq!(peek(&mut c, 0x4000, 8), 0x2222_2222_1111_1111u64.to_le_bytes());
        assert_eq!(c.state.gpr[0], 0x5555_0000_89ab_cdef);
        assert_eq!(c.state.flags() & ZF, ZF);

        // 16B: mismatch, then match.
        c.state.rip = 0x1000;
        c.state.gpr[0] = 0;
        c.state.gpr[2] = 0;
        c.state.gpr[3] = 0xb0b0;
        c.state.gpr[1] = 0xc0c0;
        run(&mut c, &asm(64, |x| x.cmpxchg16b(xmmword_ptr(rsi)))).unwrap();
        assert_eq!((c.state.gpr[0], c.state.gpr[2]), (0x2222_2222_1111_1111, 0xfedc_ba98_7654_3210));
        c.state.rip = 0x1000;
        run(&mut c, &asm(64, |x| x.cmpxchg16b(xmmword_ptr(rsi)))).unwrap();
        assert_eq!(peek(&mut c, 0x4000, 16), (0xc0c0u128 << 64 | 0xb0b0).to_le_bytes());
        assert_eq!(c.state.flags() & STATUS & ZF, ZF);
        // Misaligned: #GP(0).
        c.state.rip = 0x1000;
        c.state.gpr[6] = 0x4008;
        let e = run(&mut c, &asm(64, |x| x.cmpxchg16b(xmmword_ptr(rsi)))).unwrap_err();
        assert_eq!(e, Exception::gp0());
    }
}
