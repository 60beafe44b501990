//! The page walker: linear → physical as the MMU does it, for 2-level (32-bit),
//! PAE and 4-level (long mode) paging, with permission checks, accessed/dirty bits and
//! #PF error codes.

use quern_core::regs::ctrl::{CR0_PG, CR0_WP, CR4_PAE, EFER_NXE};

use crate::cpu::{vector, Cpu, Exception, Result};
use crate::mmu::Access;

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const G: u64 = 1 << 8;
const NX: u64 = 1 << 63;
const CR4_PSE: u64 = 1 << 4;
const CR4_PGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// What a successful walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    pub phys: u64,
    /// The leaf maps a global page (G set, CR4.PGE on): CR3 writes keep it cached.
    pub global: bool,
    /// A write to the page would pass this walk's checks and find the leaf's dirty
    /// bit set, so it changes nothing in the tables: a read's fill may enter the page
    /// for writing too (as QEMU's x86 walker does), saving the first write its walk.
    pub writable: bool,
}

/// Translates `linear` for `access` at the CPU's current privilege.
pub fn translate(cpu: &mut Cpu, linear: u64, access: Access) -> Result<u64> {
    walk(cpu, linear, access).map(|w| w.phys)
}

/// Walks the page tables for `access` to `linear` with the rules of the CPU's current
/// MMU index ([`Cpu::mmu_index`]).
pub fn walk(cpu: &mut Cpu, linear: u64, access: Access) -> Result<Walk> {
    crate::profile::count(&crate::profile::PAGE_WALKS);
    // Descriptor tables and the TSS are read with supervisor rights at any CPL (the
    // kernel index).
    let user = cpu.mmu_index() == crate::mmu::MMU_USER;
    let s = &cpu.state;
    if s.cr0 & CR0_PG == 0 {
        let phys = if s.long_mode() { linear } else { linear & 0xffff_ffff };
        return Ok(Walk { phys, global: false, writable: true });
    }
    let (levels, mut table, entry_size): (u32, u64, u64) = if s.long_mode() {
        (4, s.cr3 & ADDR_MASK, 8)
    } else if s.cr4 & CR4_PAE != 0 {
        (3, s.cr3 & 0xffff_ffe0, 8)
    } else {
        (2, s.cr3 & 0xffff_f000, 4)
    };
    let nxe = s.efer & EFER_NXE != 0;
    let wp = s.cr0 & CR0_WP != 0;
    let pse = s.cr4 & CR4_PSE != 0;

    // Permissions are the AND of all levels.
    let mut allow_write = true;
    let mut allow_user = true;
    let mut no_exec = false;
    let mut entries = [(0u64, 0u64); 4];
    for (walked, level) in (1..=levels).rev().enumerate() {
        let (shift, bits) = match (entry_size, level) {
            (4, 2) => (22, 10),
            (4, _) => (12, 10),
            (_, 3) if levels == 3 => (30, 2),
            (_, l) => (12 + 9 * (l - 1), 9),
        };
        let idx = (linear >> shift) & ((1 << bits) - 1);
        let addr = table + idx * entry_size;
        let e = if entry_size == 8 {
            cpu.mem.read_u64(addr).unwrap_or(0)
        } else {
            u64::from(cpu.mem.read_u32(addr).unwrap_or(0))
        };
        if e & P == 0 {
            return Err(page_fault(cpu, linear, access, user, false));
        }
        // The PAE PDPTEs carry no permission bits.
        if !(levels == 3 && level == 3) {
            allow_write &= e & RW != 0;
            allow_user &= e & US != 0;
            no_exec |= nxe && e & NX != 0;
        }
        entries[walked] = (addr, e);
        let leaf = level == 1 || (e & PS != 0 && (level == 2 && (entry_size == 8 || pse) || level == 3 && levels == 4));
        if leaf {
            let page_mask = (1u64 << shift) - 1;
            let base = if entry_size == 4 && level == 2 {
                // 4 MiB page: bits 13..20 hold physical bits 32..39.
                (e & 0xffc0_0000) | ((e >> 13) & 0xff) << 32
            } else {
                e & ADDR_MASK & !page_mask
            };
            check(cpu, linear, access, user, allow_write, allow_user, no_exec, wp)?;
            set_bits(cpu, &entries[..=walked], access == Access::Write, entry_size);
            let global = e & G != 0 && cpu.state.cr4 & CR4_PGE != 0;
            let writable = (access == Access::Write || e & D != 0) && write_allowed(user, allow_write, wp);
            return Ok(Walk { phys: base | (linear & page_mask), global, writable });
        }
        table = e & ADDR_MASK;
    }
    unreachable!("the walk ends at level 1")
}

#[allow(clippy::too_many_arguments)]
fn check(
    cpu: &mut Cpu,
    linear: u64,
    access: Access,
    user: bool,
    allow_write: bool,
    allow_user: bool,
    no_exec: bool,
    wp: bool,
) -> Result<()> {
    let denied = (user && !allow_user)
        || (access == Access::Write && !write_allowed(user, allow_write, wp))
        || (access == Access::Fetch && no_exec);
    if denied {
        return Err(page_fault(cpu, linear, access, user, true));
    }
    Ok(())
}

/// Whether a write passes the levels' R/W bits: a supervisor may write read-only
/// pages unless CR0.WP.
fn write_allowed(user: bool, allow_write: bool, wp: bool) -> bool {
    allow_write || !(user || wp)
}

/// Sets accessed bits on the walk and the dirty bit on the leaf for writes.
fn set_bits(cpu: &mut Cpu, entries: &[(u64, u64)], write: bool, entry_size: u64) {
    let last = entries.len() - 1;
    for (i, &(addr, e)) in entries.iter().enumerate() {
        let mut n = e | A;
        if i == last && write {
            n |= D;
        }
        if n != e {
            let _ = if entry_size == 8 { cpu.mem.write_u64(addr, n) } else { cpu.mem.write_u32(addr, n as u32) };
        }
    }
}

fn page_fault(cpu: &mut Cpu, linear: u64, access: Access, user: bool, present: bool) -> Exception {
    let code = u32::from(present)
        | u32::from(access == Access::Write) << 1
        | u32::from(user) << 2
        | u32::from(access == Access::Fetch && cpu.state.efer & EFER_NXE != 0) << 4;
    cpu.state.cr2 = linear;
    Exception { vector: vector::PF, error_code: Some(code), address: linear }
}
