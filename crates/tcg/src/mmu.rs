//! The soft-MMU: a direct-mapped TLB that generated code probes inline, and the Rust
//! slow path that fills it.
//!
//! Each entry caches one 4 KiB linear page with three tags (read, write, execute) and
//! an addend: host address = linear address + addend. Generated code computes the tag
//! of the access's *last* byte's page and compares it with the entry indexed by the
//! *first* byte's page, so an access crossing a page boundary misses and takes the
//! slow path, which splits it. A page is entered for writing only if it is RAM without
//! translated code on it (QEMU's "not dirty" trick): writes to code pages go the slow
//! way, which invalidates the translations first. MMIO pages are never entered.

use quern_core::memory::{RegionKind, PAGE_SIZE};
use quern_core::GuestMemory;

pub const TLB_BITS: u32 = 10;
pub const TLB_ENTRIES: usize = 1 << TLB_BITS;
pub const PAGE_MASK: u64 = !(PAGE_SIZE - 1);
/// A tag no page-aligned address equals.
pub const INVALID: u64 = u64::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct TlbEntry {
    pub read: u64,
    pub write: u64,
    pub code: u64,
    pub addend: u64,
}

impl TlbEntry {
    pub const EMPTY: TlbEntry = TlbEntry { read: INVALID, write: INVALID, code: INVALID, addend: 0 };
}

/// Offsets inside an entry, for generated code.
pub mod entry_off {
    pub const READ: i32 = 0;
    pub const WRITE: i32 = 8;
    pub const CODE: i32 = 16;
    pub const ADDEND: i32 = 24;
    pub const SIZE_SHIFT: u32 = 5;
}

#[repr(C)]
pub struct Tlb {
    pub entries: [TlbEntry; TLB_ENTRIES],
    /// Guest-physical page address of each entry (for the run loop's block lookup).
    pub phys: [u64; TLB_ENTRIES],
    /// Bumped by every flush, so the run loop can tell mappings may have changed.
    pub generation: u64,
}

impl Default for Tlb {
    fn default() -> Self {
        Self::new()
    }
}

impl Tlb {
    pub fn new() -> Self {
        Tlb { entries: [TlbEntry::EMPTY; TLB_ENTRIES], phys: [0; TLB_ENTRIES], generation: 0 }
    }

    pub fn index(linear: u64) -> usize {
        ((linear >> 12) as usize) & (TLB_ENTRIES - 1)
    }

    pub fn flush(&mut self) {
        crate::profile::count(&crate::profile::TLB_FLUSHES);
        self.generation += 1;
        self.entries.fill(TlbEntry::EMPTY);
    }

    /// Drops any entry for `linear`'s page (INVLPG; a page that just got code).
    pub fn flush_page(&mut self, linear: u64) {
        self.generation += 1;
        let e = &mut self.entries[Self::index(linear)];
        if [e.read, e.write, e.code].contains(&(linear & PAGE_MASK)) {
            *e = TlbEntry::EMPTY;
        }
    }

    /// The physical address `linear` maps to, if its page is cached for execution.
    pub fn lookup_code(&self, linear: u64) -> Option<u64> {
        let idx = Self::index(linear);
        (self.entries[idx].code == linear & PAGE_MASK).then(|| self.phys[idx] | (linear & !PAGE_MASK))
    }

    /// Drops write permission for every entry that maps host page `host` (a page that
    /// just got translated code, seen through any linear alias).
    pub fn protect_host_page(&mut self, host_page: u64) {
        for e in self.entries.iter_mut() {
            if e.write != INVALID && e.write.wrapping_add(e.addend) == host_page {
                e.write = INVALID;
            }
        }
    }
}

/// What an access wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Fetch,
}

/// Where a physical address lives.
pub enum Target {
    /// RAM or ROM at this host address.
    Memory { host: *mut u8, rom: bool },
    /// Device space.
    Mmio,
}

/// Looks up a guest-physical address.
pub fn phys_target(mem: &GuestMemory, phys: u64) -> Target {
    match mem.region(phys) {
        Some(r) => Target::Memory {
            // SAFETY: `phys` lies inside the region (region() checked it).
            host: unsafe { r.host_addr.add((phys - r.guest_base) as usize) },
            rom: r.kind == RegionKind::Rom,
        },
        None => Target::Mmio,
    }
}

/// Fills the entry for `linear`, just translated to `phys` for `access`, when the page
/// is RAM or ROM. Each tag is set only by a walk that checked that kind of access: the
/// read tag by any (x86 pages are always readable), the write tag by a write to a page
/// without translated code (`code_free`), the code tag by a fetch (NX).
pub fn fill(tlb: &mut Tlb, mem: &GuestMemory, linear: u64, phys: u64, access: Access, code_free: bool) {
    let page = linear & PAGE_MASK;
    let Target::Memory { host, rom } = phys_target(mem, phys & PAGE_MASK) else { return };
    // The page must be wholly inside one region for the addend to be valid.
    if mem.host_ptr(phys & PAGE_MASK, PAGE_SIZE as usize).is_none() {
        return;
    }
    let idx = Tlb::index(linear);
    let e = &mut tlb.entries[idx];
    let addend = (host as u64).wrapping_sub(page);
    if e.addend != addend || e.read != page {
        *e = TlbEntry::EMPTY;
    }
    e.addend = addend;
    e.read = page;
    tlb.phys[idx] = phys & PAGE_MASK;
    match access {
        Access::Fetch => e.code = page,
        Access::Write if !rom && code_free => e.write = page,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_flush() {
        let mem = GuestMemory::flat(1 << 20).unwrap();
        let mut tlb = Tlb::new();
        fill(&mut tlb, &mem, 0x5123, 0x5123, Access::Write, true);
        fill(&mut tlb, &mem, 0x5123, 0x5123, Access::Fetch, true);
        let e = tlb.entries[Tlb::index(0x5000)];
        assert_eq!((e.read, e.write, e.code), (0x5000, 0x5000, 0x5000));
        assert_eq!(e.addend.wrapping_add(0x5000), mem.host_ptr(0x5000, 1).unwrap() as u64);
        tlb.protect_host_page(mem.host_ptr(0x5000, 1).unwrap() as u64);
        assert_eq!(tlb.entries[Tlb::index(0x5000)].write, INVALID);
        tlb.flush_page(0x5fff);
        assert_eq!(tlb.entries[Tlb::index(0x5000)], TlbEntry::EMPTY);
        // Device space is never entered.
        fill(&mut tlb, &mem, 0x20_0000, 0x20_0000, Access::Write, true);
        assert_eq!(tlb.entries[Tlb::index(0x20_0000)], TlbEntry::EMPTY);
    }
}
