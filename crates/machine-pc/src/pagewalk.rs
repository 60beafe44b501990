//! Guest-virtual to guest-physical addresses by walking the page tables the way the
//! CPU does, for the monitor's `x` (memory as a vCPU sees it). No access rights are
//! checked: the monitor looks, it does not fault.

use quern_core::regs::{ctrl, SpecialRegs};
use quern_core::GuestMemory;

const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
const CR4_PSE: u64 = 1 << 4;

/// The physical address `vaddr` maps to under `s`, or `None` if it is not mapped.
pub fn translate(mem: &GuestMemory, s: &SpecialRegs, vaddr: u64) -> Option<u64> {
    if s.cr0 & ctrl::CR0_PG == 0 {
        return Some(vaddr & 0xffff_ffff);
    }
    let read = |addr: u64, wide: bool| -> Option<u64> {
        if wide {
            mem.read_u64(addr).ok()
        } else {
            mem.read_u32(addr).ok().map(u64::from)
        }
    };
    if s.cr4 & ctrl::CR4_PAE == 0 {
        // Two levels of 32-bit entries; 4 MiB pages with CR4.PSE.
        let pde = read((s.cr3 & 0xffff_f000) + ((vaddr >> 22) & 0x3ff) * 4, false)?;
        if pde & PRESENT == 0 {
            return None;
        }
        if pde & LARGE != 0 && s.cr4 & CR4_PSE != 0 {
            return Some((pde & 0xffc0_0000) | (vaddr & 0x3f_ffff));
        }
        let pte = read((pde & 0xffff_f000) + ((vaddr >> 12) & 0x3ff) * 4, false)?;
        return (pte & PRESENT != 0).then_some((pte & 0xffff_f000) | (vaddr & 0xfff));
    }
    // PAE: four levels in long mode, three (from the 4-entry PDPT) otherwise.
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    let (mut table, mut shift) = if s.efer & ctrl::EFER_LMA != 0 {
        (s.cr3 & ADDR, 39)
    } else {
        let pdpte = read((s.cr3 & 0xffff_ffe0) + ((vaddr >> 30) & 3) * 8, true)?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        (pdpte & ADDR, 21)
    };
    loop {
        let entry = read(table + ((vaddr >> shift) & 0x1ff) * 8, true)?;
        if entry & PRESENT == 0 {
            return None;
        }
        let page = 1u64 << shift;
        if shift == 12 || (entry & LARGE != 0 && shift <= 30) {
            return Some((entry & ADDR & !(page - 1)) | (vaddr & (page - 1)));
        }
        table = entry & ADDR;
        shift -= 9;
    }
}

/// A mapping the page tables hold: virtual address, physical address, size, and the
/// last level's entry (its flag bits).
pub type Mapping = (u64, u64, u64, u64);

/// Every present mapping under `s`, in address order, at most `limit` of them (the
/// monitor's `info tlb`). Empty without paging.
pub fn mappings(mem: &GuestMemory, s: &SpecialRegs, limit: usize) -> Vec<Mapping> {
    let mut out = Vec::new();
    if s.cr0 & ctrl::CR0_PG == 0 {
        return out;
    }
    let read = |addr: u64, wide: bool| -> u64 {
        if wide {
            mem.read_u64(addr).unwrap_or(0)
        } else {
            mem.read_u32(addr).map_or(0, u64::from)
        }
    };
    if s.cr4 & ctrl::CR4_PAE == 0 {
        for i in 0..1024u64 {
            let pde = read((s.cr3 & 0xffff_f000) + i * 4, false);
            if pde & PRESENT == 0 {
                continue;
            }
            if pde & LARGE != 0 && s.cr4 & CR4_PSE != 0 {
                out.push((i << 22, pde & 0xffc0_0000, 1 << 22, pde));
                continue;
            }
            for j in 0..1024u64 {
                let pte = read((pde & 0xffff_f000) + j * 4, false);
                if pte & PRESENT != 0 && out.len() < limit {
                    out.push((i << 22 | j << 12, pte & 0xffff_f000, 4096, pte));
                }
            }
        }
        out.truncate(limit);
        return out;
    }
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    // (table, first virtual address it maps, shift of its entries)
    let mut stack: Vec<(u64, u64, u32)> = if s.efer & ctrl::EFER_LMA != 0 {
        vec![(s.cr3 & ADDR, 0, 39)]
    } else {
        (0..4u64)
            .filter_map(|i| {
                let e = read((s.cr3 & 0xffff_ffe0) + i * 8, true);
                (e & PRESENT != 0).then_some((e & ADDR, i << 30, 21))
            })
            .rev()
            .collect()
    };
    while let Some((table, base, shift)) = stack.pop() {
        let mut children = Vec::new();
        for i in 0..512u64 {
            let e = read(table + i * 8, true);
            if e & PRESENT == 0 {
                continue;
            }
            let mut va = base | i << shift;
            if shift == 39 && va & (1 << 47) != 0 {
                va |= 0xffff_0000_0000_0000; // canonical upper half
            }
            let page = 1u64 << shift;
            if shift == 12 || (e & LARGE != 0 && shift <= 30) {
                out.push((va, e & ADDR & !(page - 1), page, e));
                if out.len() >= limit {
                    return out;
                }
            } else {
                children.push((e & ADDR, va, shift - 9));
            }
        }
        // Depth first, in address order.
        stack.extend(children.into_iter().rev());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_four_levels_and_a_2mib_page() {
        let mem = GuestMemory::flat(1 << 20).unwrap();
        // PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000 -> page 0x5000.
        mem.write_u64(0x1000, 0x2003).unwrap();
        mem.write_u64(0x2000, 0x3003).unwrap();
        mem.write_u64(0x3000 + 8, 0x4003).unwrap(); // 2 MiB..4 MiB through a table
        mem.write_u64(0x4000 + 5 * 8, 0x5003).unwrap();
        mem.write_u64(0x3000, 0x83).unwrap(); // 0..2 MiB: one large page at 0
        let s = SpecialRegs {
            cr0: ctrl::CR0_PG | 1,
            cr4: ctrl::CR4_PAE,
            cr3: 0x1000,
            efer: ctrl::EFER_LMA,
            ..Default::default()
        };
        assert_eq!(translate(&mem, &s, 0x20_5123), Some(0x5123));
        assert_eq!(translate(&mem, &s, 0x1234), Some(0x1234), "the 2 MiB page");
        assert_eq!(translate(&mem, &s, 0x40_0000), None, "not present");
        let m = mappings(&mem, &s, 100);
        assert_eq!(
            m.iter().map(|&(v, p, size, _)| (v, p, size)).collect::<Vec<_>>(),
            [(0, 0, 2 << 20), (0x20_5000, 0x5000, 4096)]
        );
    }

    #[test]
    fn no_paging_and_32_bit_paging() {
        let mem = GuestMemory::flat(1 << 20).unwrap();
        assert_eq!(translate(&mem, &SpecialRegs::default(), 0x1_2345), Some(0x1_2345));
        mem.write_u32(0x1000 + 4, 0x2003).unwrap(); // PDE for 4 MiB..8 MiB
        mem.write_u32(0x2000 + 3 * 4, 0x7003).unwrap();
        let s = SpecialRegs { cr0: ctrl::CR0_PG | 1, cr3: 0x1000, ..Default::default() };
        assert_eq!(translate(&mem, &s, 0x40_3abc), Some(0x7abc));
        assert_eq!(translate(&mem, &s, 0x80_0000), None);
    }
}
