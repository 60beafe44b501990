//! System instructions: port I/O, HLT, CLI/STI, far control transfers, software
//! interrupts, IRET, segment loads, descriptor tables, control registers, CPUID,
//! RDTSC, RDMSR/WRMSR.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};
use quern_core::regs::{ctrl, flags, msr};

use super::{addr_mask, pop, push, read_reg, write_reg, Operands, Step};
use crate::cpu::{vector, Cpu, Exception, Result};
use crate::flags::Width;
use crate::interrupt::{self, Source};
use crate::segment;
use crate::state::{CS, DS, ES, FS, GS, SS};
use crate::translate::seg_index;

/// Whether `ins` belongs to this family (`exec` returns `Some` or an error for it).
pub fn handles(ins: &Instruction) -> bool {
    use Mnemonic::*;
    match ins.mnemonic() {
        Mov => is_sreg(ins, 0) || is_sreg(ins, 1) || is_cr(ins, 0) || is_cr(ins, 1) || is_dr(ins, 0) || is_dr(ins, 1),
        Push | Pop => is_sreg(ins, 0),
        In | Out | Hlt | Cli | Sti | Jmp | Call | Retf | Iret | Iretd | Iretq | Int | Int3 | Into | Int1 | Lds
        | Les | Lfs | Lgs | Lss | Lgdt | Lidt | Sgdt | Sidt | Lldt | Ltr | Sldt | Str | Lmsw | Smsw | Clts | Invlpg
        | Wbinvd | Invd | Cpuid | Verr | Verw | Lar | Lsl | Syscall | Sysretq | Sysret | Swapgs | Rdtsc | Rdmsr
        | Wrmsr | Ud0 | Ud1 | Ud2 | INVALID => true,
        _ => false,
    }
}

/// STI but for setting IF (generated code keeps EFLAGS in a register): opens the
/// interrupt shadow if IF is clear, and returns 1 when an interrupt is waiting, also
/// asking generated code to return to the run loop at its next block head, where the
/// interrupt is taken after the shadow instruction. Otherwise the kernel's CLI/STI
/// pairs stay in their block.
pub fn sti_shadow(cpu: &mut Cpu) -> u64 {
    if cpu.state.eflags & flags::IF == 0 {
        cpu.state.inhibit_irq = 1;
    }
    if !cpu.ops().is_some_and(|o| o.interrupt_pending()) {
        return 0;
    }
    // SAFETY: see TcgKicker::kick (the flag is only ever accessed atomically).
    unsafe { std::sync::atomic::AtomicU32::from_ptr(&raw mut cpu.state.exit_request) }
        .store(1, std::sync::atomic::Ordering::Release);
    1
}

/// Runs `ins` if it belongs to this family.
pub fn exec(cpu: &mut Cpu, ins: &Instruction) -> Result<Option<Step>> {
    use Mnemonic::*;
    let step = match ins.mnemonic() {
        In | Out => port_io(cpu, ins)?,
        Hlt => {
            require_cpl0(cpu)?;
            cpu.state.rip = ins.next_ip();
            cpu.state.halted = 1;
            Step::Halt
        }
        Cli | Sti => {
            if cpu.state.protected() && u64::from(cpu.state.cpl()) > (cpu.state.eflags >> 12) & 3 {
                return Err(Exception::gp0());
            }
            if ins.mnemonic() == Cli {
                cpu.state.eflags &= !flags::IF;
                return Ok(Some(Step::Next));
            }
            let waiting = sti_shadow(cpu) != 0;
            cpu.state.eflags |= flags::IF;
            if waiting {
                cpu.state.rip = ins.next_ip();
                Step::Jump
            } else {
                Step::Next
            }
        }
        Jmp | Call => far_transfer(cpu, ins)?,
        Retf => {
            let w = op_width(ins);
            let ip = pop(cpu, w)?;
            let cs = pop(cpu, w)? as u16;
            if ins.op_count() == 1 {
                cpu.state.gpr[4] = cpu.state.gpr[4].wrapping_add(u64::from(ins.immediate16()));
            }
            let outer = cpu.state.protected() && !cpu.state.v86() && (cs & 3) as u8 > cpu.state.cpl();
            segment::load_cs(cpu, cs)?;
            if outer {
                let sp = pop(cpu, w)?;
                let ss = pop(cpu, w)? as u16;
                segment::load(cpu, SS, ss)?;
                cpu.state.gpr[4] = sp;
            }
            cpu.state.rip = ip;
            Step::Jump
        }
        Iret | Iretd | Iretq => {
            interrupt::iret(cpu, op_width(ins))?;
            Step::Jump
        }
        Int | Int3 | Into | Int1 => {
            let v = match ins.mnemonic() {
                Int => ins.immediate8(),
                Int3 => vector::BP,
                Int1 => vector::DB,
                _ => {
                    if cpu.state.flags() & flags::OF == 0 {
                        return Ok(Some(Step::Next));
                    }
                    vector::OF
                }
            };
            interrupt::deliver(cpu, v, None, Source::Software { next_rip: ins.next_ip() })?;
            Step::Jump
        }
        Mov if is_sreg(ins, 0) => {
            let sel = Operands { cpu, ins }.read(1)? as u16;
            let seg = seg_index(ins.op0_register());
            if seg == CS {
                return Err(Exception::ud());
            }
            segment::load(cpu, seg, sel)?;
            if seg == SS {
                cpu.state.inhibit_irq = 1;
            }
            Step::Next
        }
        Mov if is_sreg(ins, 1) => {
            let sel = u64::from(cpu.state.seg[seg_index(ins.op1_register())].selector);
            let o = Operands { cpu, ins };
            if ins.op0_kind() == OpKind::Memory {
                let a = o.linear();
                cpu.write_n(a, sel, 2)?;
            } else {
                // A register destination gets the selector zero-extended.
                let r = ins.op0_register();
                let r = if r.size() == 2 { r } else { r.full_register32() };
                write_reg(o.cpu, r, sel);
            }
            Step::Next
        }
        Push if is_sreg(ins, 0) => {
            let w = op_width(ins);
            let sel = u64::from(cpu.state.seg[seg_index(ins.op0_register())].selector);
            push(cpu, sel, w)?;
            Step::Next
        }
        Pop if is_sreg(ins, 0) => {
            let w = op_width(ins);
            let seg = seg_index(ins.op0_register());
            let sp = cpu.state.gpr[4];
            let sel = pop(cpu, w)? as u16;
            if let Err(e) = segment::load(cpu, seg, sel) {
                cpu.state.gpr[4] = sp;
                return Err(e);
            }
            if seg == SS {
                cpu.state.inhibit_irq = 1;
            }
            Step::Next
        }
        Lds | Les | Lfs | Lgs | Lss => {
            let w = ins.memory_size().size() as u64 - 2;
            let a = Operands { cpu, ins }.linear();
            let off = cpu.read_n(a, w as Width)?;
            let sel = cpu.read_u16(a + w)?;
            let seg = match ins.mnemonic() {
                Lds => DS,
                Les => ES,
                Lfs => FS,
                Lgs => GS,
                _ => SS,
            };
            segment::load(cpu, seg, sel)?;
            write_reg(cpu, ins.op0_register(), off);
            Step::Next
        }
        Lgdt | Lidt => {
            require_cpl0(cpu)?;
            let a = Operands { cpu, ins }.linear();
            let limit = cpu.read_u16(a)?;
            let base = if cpu.state.code_bits() == 64 {
                cpu.read_u64(a + 2)?
            } else {
                let b = u64::from(cpu.read_u32(a + 2)?);
                if op_width(ins) == 2 {
                    b & 0xff_ffff
                } else {
                    b
                }
            };
            let t = if ins.mnemonic() == Lgdt { &mut cpu.state.gdt } else { &mut cpu.state.idt };
            t.base = base;
            t.limit = limit;
            Step::Next
        }
        Sgdt | Sidt => {
            let t = if ins.mnemonic() == Sgdt { cpu.state.gdt } else { cpu.state.idt };
            let a = Operands { cpu, ins }.linear();
            cpu.write_n(a, u64::from(t.limit), 2)?;
            let w = if cpu.state.code_bits() == 64 { 8 } else { 4 };
            cpu.write_n(a + 2, t.base, w)?;
            Step::Next
        }
        Lldt | Ltr => {
            require_cpl0(cpu)?;
            let sel = Operands { cpu, ins }.read(0)? as u16;
            let s = if sel & !3 == 0 {
                crate::state::Seg { selector: sel, ..Default::default() }
            } else {
                let lo = segment::read_descriptor(cpu, sel)?;
                let mut s = segment::seg_from_descriptor(sel, lo);
                if cpu.state.long_mode() {
                    // System descriptors are 16 bytes in long mode.
                    let hi = segment::read_descriptor(cpu, sel.wrapping_add(8)).unwrap_or(0);
                    s.base |= (hi & 0xffff_ffff) << 32;
                }
                s
            };
            if ins.mnemonic() == Lldt {
                cpu.state.ldtr = s;
            } else {
                cpu.state.tr = s;
            }
            Step::Next
        }
        Sldt | Str => {
            let sel = if ins.mnemonic() == Sldt { cpu.state.ldtr.selector } else { cpu.state.tr.selector };
            Operands { cpu, ins }.write(0, u64::from(sel))?;
            Step::Next
        }
        Mov if is_cr(ins, 0) || is_cr(ins, 1) => mov_cr(cpu, ins)?,
        Mov if is_dr(ins, 0) || is_dr(ins, 1) => {
            require_cpl0(cpu)?;
            if is_dr(ins, 0) {
                let n = ins.op0_register() as usize - Register::DR0 as usize;
                cpu.state.dr[n & 7] = read_reg(cpu, ins.op1_register());
            } else {
                let n = ins.op1_register() as usize - Register::DR0 as usize;
                write_reg(cpu, ins.op0_register(), cpu.state.dr[n & 7]);
            }
            Step::Next
        }
        Lmsw => {
            require_cpl0(cpu)?;
            let v = Operands { cpu, ins }.read(0)?;
            // LMSW sets PE but cannot clear it.
            let cr0 = (cpu.state.cr0 & !0xe) | (v & 0xf) | (cpu.state.cr0 & 1);
            set_cr0(cpu, cr0)?;
            Step::Next
        }
        Smsw => {
            let v = cpu.state.cr0 & 0xffff;
            Operands { cpu, ins }.write(0, v)?;
            Step::Next
        }
        Clts => {
            require_cpl0(cpu)?;
            cpu.state.cr0 &= !(1 << 3);
            Step::Next
        }
        Invlpg => {
            require_cpl0(cpu)?;
            let a = Operands { cpu, ins }.linear();
            cpu.state.tlb.flush_page(a);
            Step::Next
        }
        Wbinvd | Invd => {
            require_cpl0(cpu)?;
            Step::Next
        }
        Cpuid => {
            let leaf = cpu.state.gpr[0] as u32;
            let (a, mut b, c, mut d) = cpu.model.cpuid(leaf, cpu.state.gpr[1] as u32);
            // The vCPU's own APIC ID, where the model's leaves leave it out.
            match leaf {
                1 => b |= (cpu.apic_id & 0xff) << 24,
                0xb | 0x1f if cpu.model.cpuid(0, 0).0 >= leaf => d = cpu.apic_id,
                _ => {}
            }
            if leaf == 1 && d & CPUID_1_EDX_APIC != 0 {
                // A local APIC globally disabled through IA32_APIC_BASE.EN is absent
                // to CPUID too (SDM "Enabling or Disabling the Local APIC"; KVM and
                // QEMU do the same).
                let base = cpu.ops().and_then(|o| o.msr_read(msr::IA32_APIC_BASE)).and_then(|r| r.ok());
                if base.is_some_and(|b| b & APIC_BASE_EN == 0) {
                    d &= !CPUID_1_EDX_APIC;
                }
            }
            cpu.state.gpr[0] = u64::from(a);
            cpu.state.gpr[3] = u64::from(b);
            cpu.state.gpr[1] = u64::from(c);
            cpu.state.gpr[2] = u64::from(d);
            Step::Next
        }
        Verr | Verw | Lar | Lsl => check_selector(cpu, ins)?,
        Syscall => syscall(cpu, ins)?,
        Sysretq | Sysret => sysret(cpu, ins)?,
        Swapgs => {
            if !cpu.state.long_mode() || cpu.state.code_bits() != 64 {
                return Err(Exception::ud());
            }
            require_cpl0(cpu)?;
            let s = &mut cpu.state;
            std::mem::swap(&mut s.seg[GS].base, &mut s.msr.kernel_gs_base);
            Step::Next
        }
        Rdtsc => {
            let t = cpu.tsc();
            cpu.state.gpr[0] = t & 0xffff_ffff;
            cpu.state.gpr[2] = t >> 32;
            Step::Next
        }
        Rdmsr => {
            require_cpl0(cpu)?;
            let v = read_msr(cpu, cpu.state.gpr[1] as u32)?;
            cpu.state.gpr[0] = v & 0xffff_ffff;
            cpu.state.gpr[2] = v >> 32;
            Step::Next
        }
        Wrmsr => {
            require_cpl0(cpu)?;
            let v = (cpu.state.gpr[2] << 32) | (cpu.state.gpr[0] & 0xffff_ffff);
            write_msr(cpu, cpu.state.gpr[1] as u32, v)?;
            Step::Next
        }
        Ud0 | Ud1 | Ud2 | INVALID => return Err(Exception::ud()),
        _ => return Ok(None),
    };
    Ok(Some(step))
}

/// VERR, VERW, LAR and LSL: ask whether a selector names a descriptor usable at the
/// current privilege, setting ZF (and, for LAR/LSL, returning its rights or limit).
/// Linux runs VERW on every return to user space for its buffer-clearing side effect.
fn check_selector(cpu: &mut Cpu, ins: &Instruction) -> Result<Step> {
    if !cpu.state.protected() || cpu.state.v86() {
        return Err(Exception::ud());
    }
    let src = if matches!(ins.mnemonic(), Mnemonic::Verr | Mnemonic::Verw) { 0 } else { 1 };
    let sel = Operands { cpu, ins }.read(src)? as u16;
    let cpl = cpu.state.cpl();
    let desc = if sel & !3 == 0 { None } else { segment::read_descriptor(cpu, sel).ok() };
    let ok = desc.map(|d| {
        let s = segment::seg_from_descriptor(sel, d);
        let typ = s.attr & 0xf;
        let code = s.attr & crate::state::attr::S != 0 && typ & 8 != 0;
        let conforming = code && typ & 4 != 0;
        let visible = conforming || (s.dpl() >= cpl && s.dpl() >= (sel & 3) as u8);
        let usable = match ins.mnemonic() {
            Mnemonic::Verr => s.attr & crate::state::attr::S != 0 && (!code || typ & 2 != 0),
            Mnemonic::Verw => s.attr & crate::state::attr::S != 0 && !code && typ & 2 != 0,
            // LAR/LSL also accept system descriptors (LDT, TSS; LAR call gates too).
            _ => s.attr & crate::state::attr::S != 0 || matches!(typ, 1 | 2 | 3 | 9 | 11),
        };
        (visible && usable, s, d)
    });
    let mut f = cpu.state.flags() & !flags::ZF;
    if let Some((true, s, d)) = ok {
        f |= flags::ZF;
        match ins.mnemonic() {
            Mnemonic::Lar => Operands { cpu, ins }.write(0, (d >> 32) & 0x00f0_ff00)?,
            Mnemonic::Lsl => Operands { cpu, ins }.write(0, u64::from(s.limit))?,
            _ => {}
        }
    }
    cpu.state.set_flags(f);
    Ok(Step::Next)
}

/// The flat segments SYSCALL and SYSRET load (no descriptor is read, as on the CPU).
fn fast_segment(selector: u16, code: bool, long: bool, dpl: u8) -> crate::state::Seg {
    use crate::state::attr;
    let typ = if code { 0xb } else { 0x3 };
    let mut a = typ | attr::S | attr::P | attr::G | (u16::from(dpl) << 5);
    if code && long {
        a |= attr::L;
    } else {
        a |= attr::DB;
    }
    crate::state::Seg { base: 0, limit: 0xffff_ffff, selector, attr: a }
}

/// SYSCALL in long mode: to ring 0 at LSTAR (CSTAR from compatibility mode), RCX and
/// R11 keep the return RIP and RFLAGS, SFMASK clears flags.
fn syscall(cpu: &mut Cpu, ins: &Instruction) -> Result<Step> {
    let s = &mut cpu.state;
    if s.efer & ctrl::EFER_SCE == 0 || !s.long_mode() {
        return Err(Exception::ud());
    }
    let from64 = s.code_bits() == 64;
    let flags = s.flags();
    s.gpr[1] = ins.next_ip();
    s.gpr[11] = flags & !(1 << 16);
    let sel = ((s.msr.star >> 32) & 0xfffc) as u16;
    s.seg[CS] = fast_segment(sel, true, true, 0);
    s.seg[SS] = fast_segment(sel.wrapping_add(8), false, true, 0);
    s.rip = if from64 { s.msr.lstar } else { s.msr.cstar & 0xffff_ffff };
    s.set_flags(flags & !s.msr.sfmask & !(1 << 16));
    Ok(Step::Jump)
}

/// SYSRET: back to ring 3 at RCX with RFLAGS from R11 (64-bit with REX.W, else
/// compatibility mode).
fn sysret(cpu: &mut Cpu, ins: &Instruction) -> Result<Step> {
    let s = &mut cpu.state;
    if s.efer & ctrl::EFER_SCE == 0 || !s.long_mode() || s.code_bits() != 64 {
        return Err(Exception::ud());
    }
    require_cpl0(cpu)?;
    let s = &mut cpu.state;
    let base = ((s.msr.star >> 48) & 0xffff) as u16;
    let to64 = ins.mnemonic() == Mnemonic::Sysretq;
    if to64 {
        s.seg[CS] = fast_segment(base.wrapping_add(16) | 3, true, true, 3);
        s.rip = s.gpr[1];
    } else {
        s.seg[CS] = fast_segment(base | 3, true, false, 3);
        s.rip = s.gpr[1] & 0xffff_ffff;
    }
    s.seg[SS].selector = base.wrapping_add(8) | 3;
    s.seg[SS].attr = (s.seg[SS].attr & !(3 << 5)) | (3 << 5);
    let f = (s.gpr[11] & 0x3c_7fd7) | 2;
    s.set_flags(f);
    Ok(Step::Jump)
}

fn require_cpl0(cpu: &Cpu) -> Result<()> {
    if cpu.state.cpl() != 0 {
        return Err(Exception::gp0());
    }
    Ok(())
}

fn is_sreg(ins: &Instruction, i: u32) -> bool {
    ins.op_kind(i) == OpKind::Register && ins.op_register(i).is_segment_register()
}
fn is_cr(ins: &Instruction, i: u32) -> bool {
    ins.op_kind(i) == OpKind::Register && ins.op_register(i).is_cr()
}
fn is_dr(ins: &Instruction, i: u32) -> bool {
    ins.op_kind(i) == OpKind::Register && ins.op_register(i).is_dr()
}

/// The operand size the encoding gives (far transfers, IRET, stack operations).
pub fn op_width(ins: &Instruction) -> Width {
    match ins.op_code().operand_size() {
        16 => 2,
        64 => 8,
        _ => 4,
    }
}

fn port_io(cpu: &mut Cpu, ins: &Instruction) -> Result<Step> {
    if cpu.state.protected() && (cpu.state.v86() || u64::from(cpu.state.cpl()) > (cpu.state.eflags >> 12) & 3) {
        return Err(Exception::gp0());
    }
    let (port_op, data_op) = if ins.mnemonic() == Mnemonic::In { (1, 0) } else { (0, 1) };
    let port =
        if ins.op_kind(port_op) == OpKind::Register { cpu.state.gpr[2] as u16 } else { u16::from(ins.immediate8()) };
    let reg = ins.op_register(data_op);
    let w = reg.size();
    let Some(ops) = cpu.ops() else { return Ok(Step::Next) };
    if ins.mnemonic() == Mnemonic::In {
        let mut b = [0u8; 4];
        ops.pio_read(port, &mut b[..w]);
        write_reg(cpu, reg, u64::from(u32::from_le_bytes(b)));
    } else {
        let v = read_reg(cpu, reg) as u32;
        ops.pio_write(port, &v.to_le_bytes()[..w]);
    }
    Ok(Step::Next)
}

/// Far JMP/CALL (direct or through memory). Near forms are translated inline and
/// reach here only with operands the inline path leaves to us.
fn far_transfer(cpu: &mut Cpu, ins: &Instruction) -> Result<Step> {
    let (sel, off, w) = match ins.op0_kind() {
        OpKind::FarBranch16 => (ins.far_branch_selector(), u64::from(ins.far_branch16()), 2),
        OpKind::FarBranch32 => (ins.far_branch_selector(), u64::from(ins.far_branch32()), 4),
        OpKind::Memory if ins.is_jmp_far_indirect() || ins.is_call_far_indirect() => {
            let w = ins.memory_size().size() as u64 - 2;
            let a = Operands { cpu, ins }.linear();
            let off = cpu.read_n(a, w as Width)?;
            (cpu.read_u16(a + w)?, off, w as Width)
        }
        _ => {
            // A near indirect transfer with an operand the inline path declined.
            let target = Operands { cpu, ins }.read(0)?;
            if ins.mnemonic() == Mnemonic::Call {
                let w = Operands { cpu, ins }.width(0);
                push(cpu, ins.next_ip(), w)?;
            }
            cpu.state.rip = target;
            return Ok(Step::Jump);
        }
    };
    if ins.mnemonic() == Mnemonic::Call {
        let old_cs = u64::from(cpu.state.seg[CS].selector);
        let sp = cpu.state.gpr[4];
        let r = push(cpu, old_cs, w).and_then(|_| push(cpu, ins.next_ip(), w));
        if let Err(e) = r {
            cpu.state.gpr[4] = sp;
            return Err(e);
        }
    }
    segment::load_cs(cpu, sel)?;
    cpu.state.rip = off & addr_mask(u32::from(w) * 8);
    Ok(Step::Jump)
}

fn mov_cr(cpu: &mut Cpu, ins: &Instruction) -> Result<Step> {
    require_cpl0(cpu)?;
    if is_cr(ins, 0) {
        let v = read_reg(cpu, ins.op1_register());
        match ins.op0_register() {
            Register::CR0 => set_cr0(cpu, v)?,
            Register::CR2 => cpu.state.cr2 = v,
            Register::CR3 => {
                cpu.state.cr3 = v;
                // Global pages stay cached (CR4.PGE); CR4 writes that clear PGE drop them.
                cpu.state.tlb.flush_non_global();
            }
            Register::CR4 => {
                // As QEMU: only the bits that change translation or its cached
                // permissions flush (PSE, PAE, PGE, PCIDE, SMEP, SMAP).
                const PAGING: u64 = 1 << 4 | 1 << 5 | 1 << 7 | 1 << 17 | 1 << 20 | 1 << 21;
                if (cpu.state.cr4 ^ v) & PAGING != 0 {
                    cpu.state.tlb.flush();
                }
                cpu.state.cr4 = v;
            }
            Register::CR8 => {
                if v & !0xf != 0 {
                    return Err(Exception::gp0());
                }
                cpu.state.cr8 = v;
                if let Some(ops) = cpu.ops() {
                    ops.set_cr8(v);
                }
            }
            _ => return Err(Exception::ud()),
        }
    } else {
        let v = match ins.op1_register() {
            Register::CR0 => cpu.state.cr0,
            Register::CR2 => cpu.state.cr2,
            Register::CR3 => cpu.state.cr3,
            Register::CR4 => cpu.state.cr4,
            Register::CR8 => cpu.ops().and_then(|o| o.cr8()).unwrap_or(cpu.state.cr8),
            _ => return Err(Exception::ud()),
        };
        write_reg(cpu, ins.op0_register(), v);
    }
    // Paging or mode may have changed: end the block.
    cpu.state.rip = ins.next_ip();
    Ok(Step::Jump)
}

fn set_cr0(cpu: &mut Cpu, v: u64) -> Result<()> {
    let v = v | ctrl::CR0_ET;
    let s = &mut cpu.state;
    if v & ctrl::CR0_PG != 0 && v & ctrl::CR0_PE == 0 {
        return Err(Exception::gp0());
    }
    // Entering or leaving long mode follows EFER.LME when paging turns on or off.
    if v & ctrl::CR0_PG != 0 && s.cr0 & ctrl::CR0_PG == 0 && s.efer & ctrl::EFER_LME != 0 {
        if s.cr4 & ctrl::CR4_PAE == 0 {
            return Err(Exception::gp0());
        }
        s.efer |= ctrl::EFER_LMA;
    }
    if v & ctrl::CR0_PG == 0 {
        s.efer &= !ctrl::EFER_LMA;
    }
    // Entries cache what PE, PG and WP decided; other bits (TS, MP, ...) keep them.
    if (s.cr0 ^ v) & (ctrl::CR0_PE | ctrl::CR0_PG | ctrl::CR0_WP) != 0 {
        s.tlb.flush();
    }
    s.cr0 = v;
    Ok(())
}

/// CPUID.1:EDX bit 9: an enabled local APIC.
const CPUID_1_EDX_APIC: u32 = 1 << 9;
/// IA32_APIC_BASE bit 11: the local APIC is enabled.
const APIC_BASE_EN: u64 = 1 << 11;

pub(crate) fn read_msr(cpu: &mut Cpu, index: u32) -> Result<u64> {
    // The machine's MSRs first: its local APIC owns IA32_APIC_BASE and the x2APIC range.
    if let Some(r) = cpu.ops().and_then(|o| o.msr_read(index)) {
        return r.map_err(|_| Exception::gp0());
    }
    let s = &cpu.state;
    Ok(match index {
        msr::EFER => s.efer,
        msr::STAR => s.msr.star,
        msr::LSTAR => s.msr.lstar,
        msr::CSTAR => s.msr.cstar,
        msr::SFMASK => s.msr.sfmask,
        msr::FS_BASE => s.seg[FS].base,
        msr::GS_BASE => s.seg[GS].base,
        msr::KERNEL_GS_BASE => s.msr.kernel_gs_base,
        msr::IA32_SYSENTER_CS => s.msr.sysenter_cs,
        msr::IA32_SYSENTER_ESP => s.msr.sysenter_esp,
        msr::IA32_SYSENTER_EIP => s.msr.sysenter_eip,
        msr::IA32_PAT => s.msr.pat,
        msr::IA32_APIC_BASE => s.apic_base,
        msr::IA32_MISC_ENABLE => s.msr.misc_enable,
        // Microcode signature (IA32_BIOS_SIGN_ID): none loaded.
        0x8b => 0,
        msr::IA32_TSC => cpu.tsc(),
        _ => return crate::model::read_msr(cpu, index),
    })
}

pub(crate) fn write_msr(cpu: &mut Cpu, index: u32, v: u64) -> Result<()> {
    if let Some(r) = cpu.ops().and_then(|o| o.msr_write(index, v)) {
        return r.map_err(|_| Exception::gp0());
    }
    let s = &mut cpu.state;
    match index {
        msr::EFER => {
            // Bits of features the model lacks are reserved. LMA is read-only.
            if v & !cpu.model.efer_writable() != 0 {
                return Err(Exception::gp0());
            }
            let efer = (v & !ctrl::EFER_LMA) | (s.efer & ctrl::EFER_LMA);
            if efer != s.efer {
                s.tlb.flush();
            }
            s.efer = efer;
        }
        msr::STAR => s.msr.star = v,
        msr::LSTAR => s.msr.lstar = v,
        msr::CSTAR => s.msr.cstar = v,
        msr::SFMASK => s.msr.sfmask = v,
        msr::FS_BASE => s.seg[FS].base = v,
        msr::GS_BASE => s.seg[GS].base = v,
        msr::KERNEL_GS_BASE => s.msr.kernel_gs_base = v,
        msr::IA32_SYSENTER_CS => s.msr.sysenter_cs = v,
        msr::IA32_SYSENTER_ESP => s.msr.sysenter_esp = v,
        msr::IA32_SYSENTER_EIP => s.msr.sysenter_eip = v,
        msr::IA32_PAT => s.msr.pat = v,
        msr::IA32_APIC_BASE => s.apic_base = v,
        msr::IA32_MISC_ENABLE => s.msr.misc_enable = v,
        0x8b => {}
        msr::IA32_TSC => {
            let now = cpu.tsc();
            cpu.state.msr.tsc_offset = cpu.state.msr.tsc_offset.wrapping_add(v.wrapping_sub(now));
        }
        _ => return crate::model::write_msr(cpu, index, v),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use crate::interp::testutil::{self, asm, cpu, run};

    /// CPUID.1:EDX.APIC reads 0 while IA32_APIC_BASE.EN is clear, 1 again once set.
    #[test]
    fn cpuid_apic_bit_follows_the_global_enable() {
        let ops = testutil::Ports { apic_base: Mutex::new(Some(0xfee0_0900)), ..Default::default() };
        let mut watch = testutil::NoCode;
        let mut c = cpu(32);
        // SAFETY: `ops` and `watch` outlive the attachment (detached below).
        unsafe { c.attach(&ops, &mut watch as *mut testutil::NoCode) };
        let code = asm(32, |a| a.cpuid());
        let apic_bit = |c: &mut crate::cpu::Cpu| {
            c.state.rip = 0x1000;
            c.state.gpr[0] = 1;
            run(c, &code).unwrap();
            c.state.gpr[2] >> 9 & 1
        };
        assert_eq!(apic_bit(&mut c), 1, "the model has an APIC");
        *ops.apic_base.lock().unwrap() = Some(0xfee0_0100);
        assert_eq!(apic_bit(&mut c), 0, "globally disabled");
        *ops.apic_base.lock().unwrap() = Some(0xfee0_0900);
        assert_eq!(apic_bit(&mut c), 1, "enabled again");
        c.detach();
    }
}
