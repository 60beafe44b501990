//! Exception and interrupt delivery: the IVT in real mode, 32-bit IDT gates in
//! protected mode, 64-bit gates (with IST) in long mode, with the stack switch a change
//! to ring 0 requires. A fault while delivering becomes #DF; one while delivering #DF
//! is a triple fault, which the caller turns into a shutdown.

use quern_core::regs::flags::{IF, TF};

use crate::cpu::{vector, Cpu, Exception, Result};
use crate::interp::{pop, push};
use crate::segment;
use crate::state::{Seg, CS, SS};

const NT: u64 = 1 << 14;
const RF: u64 = 1 << 16;
const VM: u64 = 1 << 17;

/// How the event arose: it decides the return address and privilege checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A fault or external interrupt: return to `rip` (the state's RIP).
    Hardware,
    /// INT n / INT3 / INTO: return to `next_rip`, DPL checked.
    Software { next_rip: u64 },
}

/// The CPU could not deliver even #DF.
#[derive(Debug)]
pub struct TripleFault;

/// Delivers an exception, turning a nested fault into #DF, and two into a triple fault.
pub fn deliver_exception(cpu: &mut Cpu, e: Exception) -> std::result::Result<(), TripleFault> {
    if e.vector == vector::PF {
        cpu.state.cr2 = e.address;
    }
    match deliver(cpu, e.vector, e.error_code, Source::Hardware) {
        Ok(()) => Ok(()),
        Err(e2) => {
            log::debug!("tcg: fault {:?} while delivering vector {}", e2, e.vector);
            if e.vector == vector::DF {
                return Err(TripleFault);
            }
            deliver(cpu, vector::DF, Some(0), Source::Hardware).map_err(|_| TripleFault)
        }
    }
}

/// Delivers vector `v` through the IVT or IDT.
pub fn deliver(cpu: &mut Cpu, v: u8, error: Option<u32>, src: Source) -> Result<()> {
    log::debug!("vector {v:#x} ({src:?}, error {error:?}) at rip {:#x}", cpu.state.rip);
    cpu.state.halted = 0;
    let ret = match src {
        Source::Hardware => cpu.state.rip,
        Source::Software { next_rip } => next_rip,
    };
    if !cpu.state.protected() {
        return deliver_real(cpu, v, ret);
    }
    if cpu.state.long_mode() {
        deliver_long(cpu, v, error, src, ret)
    } else {
        deliver_protected(cpu, v, error, src, ret)
    }
}

fn deliver_real(cpu: &mut Cpu, v: u8, ret: u64) -> Result<()> {
    let entry = cpu.state.idt.base + u64::from(v) * 4;
    if u64::from(v) * 4 + 3 > u64::from(cpu.state.idt.limit) {
        return Err(Exception::gp0());
    }
    let ivt = cpu.read_u32(entry)?;
    let flags = cpu.state.flags();
    push(cpu, flags & 0xffff, 2)?;
    push(cpu, u64::from(cpu.state.seg[CS].selector), 2)?;
    push(cpu, ret & 0xffff, 2)?;
    segment::load_real(cpu, CS, (ivt >> 16) as u16);
    cpu.state.rip = u64::from(ivt & 0xffff);
    cpu.state.eflags &= !(IF | TF | (1 << 18));
    Ok(())
}

/// Reads gate `v`: (offset, selector, type, dpl, ist).
fn read_gate(cpu: &mut Cpu, v: u8, long: bool, src: Source) -> Result<(u64, u16, u8, u8, u8)> {
    let size = if long { 16 } else { 8 };
    let err = u32::from(v) * 8 + 2;
    if u64::from(v) * size + size - 1 > u64::from(cpu.state.idt.limit) {
        return Err(Exception::with_code(vector::GP, err));
    }
    let base = cpu.state.idt.base + u64::from(v) * size;
    let lo = cpu.read_system_n(base, 8)?;
    let hi = if long { cpu.read_system_n(base + 8, 8)? } else { 0 };
    let typ = ((lo >> 40) & 0xf) as u8;
    let dpl = ((lo >> 45) & 3) as u8;
    let present = lo & (1 << 47) != 0;
    if let Source::Software { .. } = src {
        if dpl < cpu.state.cpl() {
            return Err(Exception::with_code(vector::GP, err));
        }
    }
    if !present {
        return Err(Exception::with_code(vector::NP, err));
    }
    let offset = (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | (hi & 0xffff_ffff) << 32;
    let sel = ((lo >> 16) & 0xffff) as u16;
    let ist = ((lo >> 32) & 7) as u8;
    Ok((offset, sel, typ, dpl, ist))
}

fn deliver_protected(cpu: &mut Cpu, v: u8, error: Option<u32>, src: Source, ret: u64) -> Result<()> {
    let (offset, sel, typ, _, _) = read_gate(cpu, v, false, src)?;
    let gate32 = match typ {
        0xe | 0xf => true,
        0x6 | 0x7 => false,
        _ => return Err(Exception::with_code(vector::GP, u32::from(v) * 8 + 2)),
    };
    let w = if gate32 { 4 } else { 2 };
    let old_flags = cpu.state.flags();
    let old_cs = cpu.state.seg[CS];
    let old_cpl = cpu.state.cpl();
    let target = segment::seg_from_descriptor(sel, segment::read_descriptor(cpu, sel)?);
    let new_cpl = target.dpl();
    if new_cpl < old_cpl {
        // Inner privilege: the TSS gives the new stack.
        let (old_ss, old_esp) = (cpu.state.seg[SS].selector, cpu.state.gpr[4]);
        let tss = cpu.state.tr.base;
        let esp = cpu.read_system_n(tss + 4 + 8 * u64::from(new_cpl), 4)?;
        let ss = cpu.read_system_n(tss + 8 + 8 * u64::from(new_cpl), 2)? as u16;
        segment::load_cs(cpu, sel)?;
        let ss_desc = segment::read_descriptor(cpu, ss)?;
        cpu.state.seg[SS] = segment::seg_from_descriptor(ss, ss_desc);
        cpu.state.gpr[4] = esp;
        push(cpu, u64::from(old_ss), w)?;
        push(cpu, old_esp, w)?;
    } else {
        segment::load_cs(cpu, sel)?;
    }
    push(cpu, old_flags, w)?;
    push(cpu, u64::from(old_cs.selector), w)?;
    push(cpu, ret, w)?;
    if let Some(code) = error {
        push(cpu, u64::from(code), w)?;
    }
    finish(cpu, offset, typ & 1 == 0);
    Ok(())
}

fn deliver_long(cpu: &mut Cpu, v: u8, error: Option<u32>, src: Source, ret: u64) -> Result<()> {
    let (offset, sel, typ, _, ist) = read_gate(cpu, v, true, src)?;
    if typ != 0xe && typ != 0xf {
        return Err(Exception::with_code(vector::GP, u32::from(v) * 8 + 2));
    }
    let old_flags = cpu.state.flags();
    let old_cs = cpu.state.seg[CS].selector;
    let (old_ss, old_rsp) = (cpu.state.seg[SS].selector, cpu.state.gpr[4]);
    let old_cpl = cpu.state.cpl();
    let target = segment::seg_from_descriptor(sel, segment::read_descriptor(cpu, sel)?);
    let new_cpl = target.dpl();
    let tss = cpu.state.tr.base;
    let mut rsp = old_rsp;
    if ist != 0 {
        rsp = cpu.read_system_n(tss + 0x24 + 8 * u64::from(ist - 1), 8)?;
    } else if new_cpl < old_cpl {
        rsp = cpu.read_system_n(tss + 4 + 8 * u64::from(new_cpl), 8)?;
    }
    segment::load_cs(cpu, sel)?;
    if new_cpl < old_cpl {
        // SS becomes a null selector with the new RPL.
        cpu.state.seg[SS] = Seg { selector: u16::from(new_cpl), ..Seg::default() };
    }
    cpu.state.gpr[4] = rsp & !0xf;
    push(cpu, u64::from(old_ss), 8)?;
    push(cpu, old_rsp, 8)?;
    push(cpu, old_flags, 8)?;
    push(cpu, u64::from(old_cs), 8)?;
    push(cpu, ret, 8)?;
    if let Some(code) = error {
        push(cpu, u64::from(code), 8)?;
    }
    finish(cpu, offset, typ & 1 == 0);
    Ok(())
}

fn finish(cpu: &mut Cpu, offset: u64, interrupt_gate: bool) {
    cpu.state.rip = offset;
    let mut f = cpu.state.flags() & !(TF | NT | RF | VM);
    if interrupt_gate {
        f &= !IF;
    }
    cpu.state.set_flags(f);
}

/// IRET in every mode.
pub fn iret(cpu: &mut Cpu, w: u8) -> Result<()> {
    // IRET ends NMI blocking (even when it faults later, as on hardware it is the
    // instruction's execution that unblocks).
    cpu.nmi_blocked = false;
    if !cpu.state.protected() {
        let ip = pop(cpu, w)?;
        let cs = pop(cpu, w)? as u16;
        let fl = pop(cpu, w)?;
        segment::load_real(cpu, CS, cs);
        cpu.state.rip = ip;
        let keep = if w == 2 { !0xffffu64 } else { VM | (1 << 20) | (1 << 19) };
        let f = (cpu.state.flags() & keep) | (fl & !keep);
        cpu.state.set_flags(f);
        return Ok(());
    }
    let old_cpl = cpu.state.cpl();
    let ip = pop(cpu, w)?;
    let cs = pop(cpu, w)? as u16;
    let fl = pop(cpu, w)?;
    let long = cpu.state.long_mode();
    let rpl = (cs & 3) as u8;
    let (sp, ss) = if long || rpl > old_cpl {
        let sp = pop(cpu, w)?;
        let ss = pop(cpu, w)? as u16;
        (Some(sp), ss)
    } else {
        (None, 0)
    };
    segment::load_cs(cpu, cs)?;
    cpu.state.rip = ip;
    // IOPL and IF change only with enough privilege.
    let mut keep = VM | (1 << 20) | (1 << 19);
    if old_cpl > 0 {
        keep |= 3 << 12;
    }
    if u64::from(old_cpl) > (cpu.state.eflags >> 12) & 3 {
        keep |= IF;
    }
    if w == 2 {
        keep |= !0xffff;
    }
    let f = (cpu.state.flags() & keep) | (fl & !keep);
    cpu.state.set_flags(f);
    if let Some(sp) = sp {
        if long && ss & !3 == 0 {
            cpu.state.seg[SS] = Seg { selector: ss, ..Seg::default() };
        } else {
            segment::load(cpu, SS, ss)?;
        }
        cpu.state.gpr[4] = sp;
    }
    Ok(())
}
