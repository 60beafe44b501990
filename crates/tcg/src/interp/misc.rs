//! Flag instructions (CLC, STC, CMC, CLD, STD, LAHF, SAHF, PUSHF, POPF), sign
//! extensions (CBW..CQO), LEAVE, ENTER, PUSHA/POPA, XLAT, LOOPE/LOOPNE, BOUND, ARPL
//! and the instructions that do nothing an emulator can observe (PAUSE, fences,
//! prefetches).

use iced_x86::{Instruction, Mnemonic};
use quern_core::regs::flags::{AF, CF, DF, IF, PF, SF, ZF};

use super::system::op_width;
use super::{addr_mask, pop, push, read_reg, stack_width, write_reg, Operands, Step};
use crate::cpu::{vector, Cpu, Exception, Result};
use crate::state::DS;
use crate::translate::seg_index;

const AC: u64 = 1 << 18;
const ID: u64 = 1 << 21;
const IOPL: u64 = 3 << 12;

/// Whether `ins` belongs to this family (`exec` returns `Some` or an error for it).
pub fn handles(ins: &Instruction) -> bool {
    use Mnemonic::*;
    matches!(
        ins.mnemonic(),
        Clc | Stc
            | Cmc
            | Cld
            | Std
            | Lahf
            | Sahf
            | Pushf
            | Pushfd
            | Pushfq
            | Popf
            | Popfd
            | Popfq
            | Cbw
            | Cwde
            | Cdqe
            | Cwd
            | Cdq
            | Cqo
            | Leave
            | Enter
            | Pusha
            | Pushad
            | Popa
            | Popad
            | Xlatb
            | Loope
            | Loopne
            | Bound
            | Arpl
            | Pause
            | Lfence
            | Mfence
            | Sfence
            | Prefetchnta
            | Prefetcht0
            | Prefetcht1
            | Prefetcht2
            | Prefetchw
            | Endbr32
            | Endbr64
            | Nop
            | Clflush
            | Clflushopt
            | Wait
    )
}

/// Runs `ins` if it belongs to this family.
pub fn exec(cpu: &mut Cpu, ins: &Instruction) -> Result<Option<Step>> {
    use Mnemonic::*;
    let s = &mut cpu.state;
    match ins.mnemonic() {
        Clc | Stc | Cmc => {
            let f = s.flags();
            let f = match ins.mnemonic() {
                Clc => f & !CF,
                Stc => f | CF,
                _ => f ^ CF,
            };
            s.set_flags(f);
        }
        Cld => s.eflags &= !DF,
        Std => s.eflags |= DF,
        Lahf => {
            let f = s.flags();
            s.gpr[0] = (s.gpr[0] & !0xff00) | ((f & 0xff) << 8);
        }
        Sahf => {
            let ah = (s.gpr[0] >> 8) & (CF | PF | AF | ZF | SF);
            let f = (s.flags() & !0xff) | ah | 2;
            s.set_flags(f);
        }
        Pushf | Pushfd | Pushfq => {
            let w = op_width(ins);
            // VM and RF read as 0 in the pushed image.
            let f = s.flags() & !(1 << 16 | 1 << 17);
            push(cpu, f, w)?;
        }
        Popf | Popfd | Popfq => {
            let w = op_width(ins);
            let v = pop(cpu, w)?;
            let s = &mut cpu.state;
            let cpl = u64::from(s.cpl());
            let iopl = (s.eflags >> 12) & 3;
            let mut writable = 0x3f_7fd5 & !(1 << 16 | 1 << 17 | 1 << 19 | 1 << 20);
            if s.protected() && cpl > 0 {
                writable &= !IOPL;
            }
            if s.protected() && cpl > iopl {
                writable &= !IF;
            }
            if w == 2 {
                writable &= 0xffff;
            }
            let f = (s.flags() & !writable) | (v & writable);
            if f & IF != 0 && s.eflags & IF == 0 {
                s.inhibit_irq = 1;
            }
            s.set_flags(f & (0x3f_7fd5 | AC | ID));
        }
        Cbw => {
            let v = s.gpr[0] as i8 as i64 as u64;
            write_reg(cpu, iced_x86::Register::AX, v);
        }
        Cwde => {
            let v = s.gpr[0] as i16 as i64 as u64;
            write_reg(cpu, iced_x86::Register::EAX, v);
        }
        Cdqe => s.gpr[0] = s.gpr[0] as i32 as i64 as u64,
        Cwd => {
            let hi = if s.gpr[0] & 0x8000 != 0 { 0xffff } else { 0 };
            write_reg(cpu, iced_x86::Register::DX, hi);
        }
        Cdq => s.gpr[2] = if s.gpr[0] & 0x8000_0000 != 0 { 0xffff_ffff } else { 0 },
        Cqo => s.gpr[2] = if s.gpr[0] & (1 << 63) != 0 { u64::MAX } else { 0 },
        Leave => {
            let sw = stack_width(cpu);
            let w = op_width(ins);
            let bp = cpu.state.gpr[5] & addr_mask(u32::from(sw) * 8);
            let old_sp = cpu.state.gpr[4];
            cpu.state.gpr[4] = (cpu.state.gpr[4] & !addr_mask(u32::from(sw) * 8)) | bp;
            match pop(cpu, w) {
                Ok(v) => write_reg(cpu, bp_reg(w), v),
                Err(e) => {
                    cpu.state.gpr[4] = old_sp;
                    return Err(e);
                }
            }
        }
        Enter => enter(cpu, ins)?,
        Pusha | Pushad => {
            let w = op_width(ins);
            let sp = cpu.state.gpr[4];
            for r in [0usize, 1, 2, 3, 4, 5, 6, 7] {
                let v = if r == 4 { sp } else { cpu.state.gpr[r] };
                if let Err(e) = push(cpu, v, w) {
                    cpu.state.gpr[4] = sp;
                    return Err(e);
                }
            }
        }
        Popa | Popad => {
            let w = op_width(ins);
            let sp = cpu.state.gpr[4];
            let mut vals = [0u64; 8];
            for r in (0..8).rev() {
                match pop(cpu, w) {
                    Ok(v) => vals[r] = v,
                    Err(e) => {
                        cpu.state.gpr[4] = sp;
                        return Err(e);
                    }
                }
            }
            for (r, v) in vals.iter().enumerate() {
                if r != 4 {
                    write_reg(cpu, gpr_of(r, w), *v);
                }
            }
        }
        Xlatb => {
            let o = Operands { cpu, ins };
            let bits = super::address_size_of(ins, o.cpu.state.code_bits());
            let off = (o.cpu.state.gpr[3].wrapping_add(o.cpu.state.gpr[0] & 0xff)) & addr_mask(bits);
            let seg =
                if ins.segment_prefix() == iced_x86::Register::None { DS } else { seg_index(ins.segment_prefix()) };
            let a = o.seg_linear(seg, off);
            let v = cpu.read_u8(a)?;
            cpu.state.gpr[0] = (cpu.state.gpr[0] & !0xff) | u64::from(v);
        }
        Loope | Loopne => {
            let bits = super::address_size_of(ins, s.code_bits());
            let m = addr_mask(bits);
            let c = s.gpr[1].wrapping_sub(1) & m;
            s.gpr[1] = (s.gpr[1] & !m) | c;
            let zf = s.flags() & ZF != 0;
            let go = c != 0 && (zf == (ins.mnemonic() == Loope));
            s.rip = if go { ins.near_branch_target() } else { ins.next_ip() };
            return Ok(Some(Step::Jump));
        }
        Bound => {
            // BOUND r, m: #BR unless low <= r <= high, all signed at the operand size.
            let w = ins.op0_register().size() as u8;
            let a = Operands { cpu, ins }.linear();
            let lo = cpu.read_n(a, w)?;
            let hi = cpu.read_n(cpu.wrap_linear(a.wrapping_add(u64::from(w))), w)?;
            let sx = |v: u64| if w == 2 { i64::from(v as i16) } else { i64::from(v as i32) };
            let idx = sx(read_reg(cpu, ins.op0_register()));
            if idx < sx(lo) || idx > sx(hi) {
                return Err(Exception::new(vector::BR));
            }
        }
        Arpl => {
            // ARPL r/m16, r16: raise the destination selector's RPL to the source's.
            if !s.protected() || s.v86() || s.code_bits() == 64 {
                return Err(Exception::ud());
            }
            let mut o = Operands { cpu, ins };
            let dst = if ins.op0_kind() == iced_x86::OpKind::Register {
                o.cpu.state.gpr[ins.op0_register().full_register().number()] & 0xffff
            } else {
                o.read(0)?
            };
            let src = read_reg(o.cpu, ins.op1_register()) & 0xffff;
            let raise = dst & 3 < src & 3;
            if raise {
                let v = (dst & !3) | (src & 3);
                if ins.op0_kind() == iced_x86::OpKind::Register {
                    // Only the low word changes, whatever register size iced names.
                    write_reg(o.cpu, gpr_of(ins.op0_register().full_register().number(), 2), v);
                } else {
                    o.write(0, v)?;
                }
            }
            let f = cpu.state.flags();
            cpu.state.set_flags((f & !ZF) | if raise { ZF } else { 0 });
        }
        Mfence => std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst),
        Pause | Lfence | Sfence | Prefetchnta | Prefetcht0 | Prefetcht1 | Prefetcht2 | Prefetchw | Endbr32
        | Endbr64 | Nop | Clflush | Clflushopt => {}
        // WAIT checks for pending x87 exceptions (never pending here, #MF is not
        // modelled) and, with CR0.MP and CR0.TS set, raises #NM for lazy FPU switching.
        Wait => {
            if s.cr0 & 0xa == 0xa {
                return Err(crate::cpu::Exception::new(crate::cpu::vector::NM));
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(Step::Next))
}

fn bp_reg(w: u8) -> iced_x86::Register {
    gpr_of(5, w)
}

fn gpr_of(n: usize, w: u8) -> iced_x86::Register {
    use iced_x86::Register as R;
    let regs16 = [R::AX, R::CX, R::DX, R::BX, R::SP, R::BP, R::SI, R::DI];
    let regs32 = [R::EAX, R::ECX, R::EDX, R::EBX, R::ESP, R::EBP, R::ESI, R::EDI];
    let regs64 = [R::RAX, R::RCX, R::RDX, R::RBX, R::RSP, R::RBP, R::RSI, R::RDI];
    match w {
        2 => regs16[n],
        4 => regs32[n],
        _ => regs64[n],
    }
}

/// ENTER size, level: builds a stack frame with `level` saved frame pointers.
fn enter(cpu: &mut Cpu, ins: &Instruction) -> Result<()> {
    let w = op_width(ins);
    let sw = stack_width(cpu);
    let m = addr_mask(u32::from(sw) * 8);
    let size = u64::from(ins.immediate16());
    let level = ins.immediate8_2nd() % 32;
    let sp0 = cpu.state.gpr[4];
    let run = |cpu: &mut Cpu| -> Result<()> {
        push(cpu, cpu.state.gpr[5], w)?;
        let frame = cpu.state.gpr[4] & m;
        let mut bp = cpu.state.gpr[5] & m;
        for _ in 1..level {
            bp = bp.wrapping_sub(u64::from(w)) & m;
            let a = Operands { cpu, ins }.seg_linear(crate::state::SS, bp);
            let v = cpu.read_n(a, w)?;
            push(cpu, v, w)?;
        }
        if level > 0 {
            push(cpu, frame, w)?;
        }
        write_reg(cpu, bp_reg(w.min(sw)), frame);
        let sp = (cpu.state.gpr[4] & m).wrapping_sub(size) & m;
        cpu.state.gpr[4] = (cpu.state.gpr[4] & !m) | sp;
        Ok(())
    };
    run(cpu).inspect_err(|_| cpu.state.gpr[4] = sp0)
}

#[cfg(test)]
mod tests {
    use quern_core::regs::flags::ZF;

    use crate::cpu::{vector, Exception};
    use crate::interp::testutil::{cpu, poke, run};

    #[test]
    fn bound_checks_signed_limits() {
        let mut c = cpu(32);
        poke(&mut c, 0x600, &(-5i32).to_le_bytes());
        poke(&mut c, 0x604, &7i32.to_le_bytes());
        c.state.gpr[3] = 0x600;
        let code = [0x62, 0x03]; // bound eax, [ebx]
        for (v, ok) in [(-5i64, true), (7, true), (0, true), (-6, false), (8, false)] {
            c.state.rip = 0x1000;
            c.state.gpr[0] = v as u64 & 0xffff_ffff;
            let r = run(&mut c, &code);
            if ok {
                r.unwrap();
            } else {
                assert_eq!(r.unwrap_err(), Exception::new(vector::BR), "{v}");
            }
        }
        // 16-bit form: word limits.
        let mut c = cpu(16);
        poke(&mut c, 0x600, &[0x10, 0x00, 0x20, 0x00]);
        c.state.gpr[3] = 0x600;
        c.state.gpr[0] = 0xffff_0021;
        assert_eq!(run(&mut c, &[0x62, 0x07]).unwrap_err().vector, vector::BR); // bound ax, [bx]
    }

    #[test]
    fn arpl_raises_rpl() {
        let mut c = cpu(32);
        c.state.gpr[0] = 0xaaaa_0010; // ax: RPL 0
        c.state.gpr[1] = 0x0000_0023; // cx: RPL 3
        run(&mut c, &[0x63, 0xc8]).unwrap(); // arpl ax, cx
        assert_eq!(c.state.gpr[0], 0xaaaa_0013);
        assert_eq!(c.state.flags() & ZF, ZF);
        c.state.rip = 0x1000;
        run(&mut c, &[0x63, 0xc8]).unwrap();
        assert_eq!(c.state.flags() & ZF, 0);
        // Real mode: #UD.
        let mut c = cpu(16);
        assert_eq!(run(&mut c, &[0x63, 0xc8]).unwrap_err(), Exception::ud());
    }
}
