//! Segment loading and descriptor tables, as MOV Sreg, far transfers and interrupt
//! delivery need them.

use crate::cpu::{vector, Cpu, Exception, Result};
use crate::state::{attr, Seg, CS, SS};

/// Reads the 8-byte descriptor `sel` names in the GDT or LDT.
pub fn read_descriptor(cpu: &mut Cpu, sel: u16) -> Result<u64> {
    let (base, limit) = if sel & 4 != 0 {
        (cpu.state.ldtr.base, u64::from(cpu.state.ldtr.limit))
    } else {
        (cpu.state.gdt.base, u64::from(cpu.state.gdt.limit))
    };
    let index = u64::from(sel & !7);
    if index + 7 > limit {
        return Err(Exception::with_code(vector::GP, u32::from(sel & !3)));
    }
    let mut b = [0u8; 8];
    // Descriptor tables are read with supervisor rights.
    cpu.read_system(base.wrapping_add(index), &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// The segment-cache contents a descriptor describes.
pub fn seg_from_descriptor(sel: u16, d: u64) -> Seg {
    let base = ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24);
    let mut limit = ((d & 0xffff) | (((d >> 48) & 0xf) << 16)) as u32;
    let a = (((d >> 40) & 0xff) | (((d >> 52) & 0xf) << 12)) as u16;
    if a & attr::G != 0 {
        limit = (limit << 12) | 0xfff;
    }
    Seg { base, limit, selector: sel, attr: a }
}

/// A real-mode (or virtual-8086) segment load: base = selector * 16.
pub fn load_real(cpu: &mut Cpu, seg: usize, sel: u16) {
    let v86 = cpu.state.v86();
    let s = &mut cpu.state.seg[seg];
    s.selector = sel;
    s.base = u64::from(sel) << 4;
    if v86 {
        s.limit = 0xffff;
        s.attr = 0xf3 | if seg == CS { 0x8 } else { 0 };
    }
}

/// Loads segment register `seg` with `sel` under the current mode's rules.
pub fn load(cpu: &mut Cpu, seg: usize, sel: u16) -> Result<()> {
    if !cpu.state.protected() || cpu.state.v86() {
        load_real(cpu, seg, sel);
        return Ok(());
    }
    if sel & !3 == 0 {
        // A null selector: allowed for data segments (and SS in 64-bit mode).
        if seg == CS || (seg == SS && !(cpu.state.long_mode() && cpu.state.cpl() != 3)) {
            return Err(Exception::gp0());
        }
        cpu.state.seg[seg] = Seg { selector: sel, ..Seg::default() };
        return Ok(());
    }
    let d = read_descriptor(cpu, sel)?;
    let s = seg_from_descriptor(sel, d);
    if s.attr & attr::S == 0 {
        return Err(Exception::with_code(vector::GP, u32::from(sel & !3)));
    }
    if s.attr & attr::P == 0 {
        let v = if seg == SS { vector::SS } else { vector::NP };
        return Err(Exception::with_code(v, u32::from(sel & !3)));
    }
    set_accessed(cpu, sel, d)?;
    cpu.state.seg[seg] = Seg { attr: s.attr | 1, ..s };
    Ok(())
}

/// Sets the descriptor's accessed bit, as the CPU does on a load.
fn set_accessed(cpu: &mut Cpu, sel: u16, d: u64) -> Result<()> {
    if d & (1 << 40) != 0 {
        return Ok(());
    }
    let base = if sel & 4 != 0 { cpu.state.ldtr.base } else { cpu.state.gdt.base };
    let a = base.wrapping_add(u64::from(sel & !7)) + 5;
    let b = ((d >> 40) as u8) | 1;
    cpu.write_system(a, &[b])
}

/// Loads CS for a far transfer to `sel:offset` at privilege `cpl` (protected mode).
pub fn load_cs(cpu: &mut Cpu, sel: u16) -> Result<()> {
    if !cpu.state.protected() || cpu.state.v86() {
        load_real(cpu, CS, sel);
        return Ok(());
    }
    if sel & !3 == 0 {
        return Err(Exception::gp0());
    }
    let d = read_descriptor(cpu, sel)?;
    let s = seg_from_descriptor(sel, d);
    // Must be a code segment.
    if s.attr & attr::S == 0 || s.attr & 0x8 == 0 {
        return Err(Exception::with_code(vector::GP, u32::from(sel & !3)));
    }
    if s.attr & attr::P == 0 {
        return Err(Exception::with_code(vector::NP, u32::from(sel & !3)));
    }
    set_accessed(cpu, sel, d)?;
    // The new CPL is the descriptor's DPL (conforming segments keep the CPL: treated
    // alike here); the selector's RPL follows it.
    // A privilege change needs no TLB flush: each MMU index has its own entries.
    let dpl = s.dpl();
    cpu.state.seg[CS] = Seg { selector: (sel & !3) | u16::from(dpl), attr: s.attr | 1, ..s };
    Ok(())
}
