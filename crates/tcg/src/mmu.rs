//! The soft-MMU: a direct-mapped TLB that generated code probes inline, and the Rust
//! slow path that fills it.
//!
//! There is one array per MMU index ([`MMU_KERNEL`], [`MMU_USER`]): an entry holds
//! what a walk with that index's permission rules allowed, so privilege changes keep
//! every entry. CR3 writes drop all but the global pages' entries, INVLPG one page in
//! every array. Each entry caches one 4 KiB linear page with three tags (read, write, execute) and
//! an addend: host address = linear address + addend. Generated code computes the tag
//! of the access's *last* byte's page and compares it with the entry indexed by the
//! *first* byte's page, so an access crossing a page boundary misses and takes the
//! slow path, which splits it. A page is entered for writing only if it is RAM without
//! translated code on it (QEMU's "not dirty" trick): writes to code pages go the slow
//! way, which invalidates the translations first. MMIO pages are never entered.

use std::sync::atomic::{AtomicU32, Ordering};

use quern_core::memory::{RegionKind, PAGE_SIZE};
use quern_core::GuestMemory;

use crate::paging::Walk;

/// Sets of an MMU index's table: 32 Ki, of two ways each (2 MiB). A large program's
/// working set (perl, python: the heap, stacks, libraries, the kernel's pages) spans
/// hundreds of pages; in a direct-mapped table of 4 Ki entries a few of them shared a
/// slot and evicted each other on every turn of a loop, a page walk each time (QEMU
/// grows its table with use, up to 4 Mi entries, behind an 8-entry victim TLB).
pub const TLB_BITS: u32 = 15;
pub const TLB_ENTRIES: usize = 1 << TLB_BITS;
/// Slots of a table: set `i`'s ways are slots `i` and `i + TLB_ENTRIES`.
pub const TLB_SLOTS: usize = 2 * TLB_ENTRIES;
pub const PAGE_MASK: u64 = !(PAGE_SIZE - 1);
/// A page's tag is the address of its last byte, so that no page's tag is zero and an
/// all-zero table is an empty one: a vCPU's megabytes of TLB cost nothing until used.
pub const fn page_tag(addr: u64) -> u64 {
    addr | !PAGE_MASK
}

/// The tag of no page.
pub const INVALID: u64 = 0;

/// MMU indexes, as QEMU's: one TLB array per set of permission rules, so that a change
/// of privilege (a system call, an interrupt, its return) needs no flush. Each block is
/// translated for one index (the CPL is in its mode key) and probes that array at a
/// constant offset ([`crate::state::off::tlb_offset`]).
///
/// - [`MMU_KERNEL`]: CPL 0-2, and the CPU's own accesses to system structures (GDT,
///   LDT, IDT, TSS) at any CPL: supervisor rights, writes to read-only pages allowed
///   unless CR0.WP.
/// - [`MMU_USER`]: CPL 3 (and virtual-8086 mode): user pages only, read-only enforced.
///
/// SMAP and SMEP are not implemented (nor advertised). When they are, a kernel access
/// with CR4.SMAP set and EFLAGS.AC clear follows other rules than one with AC set, so
/// the kernel index splits in two as QEMU's does (MMU_KSMAP_IDX / MMU_KNOSMAP_IDX), and
/// STAC/CLAC/POPF must end their block for the block's index to stay fixed.
pub const MMU_KERNEL: usize = 0;
pub const MMU_USER: usize = 1;
pub const MMU_MODES: usize = 2;

/// The MMU index of ordinary accesses at privilege `cpl`.
pub const fn mmu_index(cpl: u8) -> usize {
    if cpl == 3 {
        MMU_USER
    } else {
        MMU_KERNEL
    }
}

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

    /// The tag an access of `access` compares with.
    pub fn tag(&self, access: Access) -> u64 {
        match access {
            Access::Read => self.read,
            Access::Write => self.write,
            Access::Fetch => self.code,
        }
    }
}

const _: () = assert!(std::mem::size_of::<TlbEntry>() == 1 << entry_off::SIZE_SHIFT);

/// Offsets inside an entry, for generated code.
pub mod entry_off {
    pub const READ: i32 = 0;
    pub const WRITE: i32 = 8;
    pub const CODE: i32 = 16;
    pub const ADDEND: i32 = 24;
    pub const SIZE_SHIFT: u32 = 5;
    /// From a set's first way to its second.
    pub const WAY1: i32 = (super::TLB_ENTRIES << SIZE_SHIFT) as i32;
}

/// The TLB of one MMU index: what generated code probes (`entries`) and what only Rust
/// reads. Two-way set-associative: generated code probes the first way inline and the
/// second out of line; a fill puts the page in the first way and moves what was there
/// to the second.
#[repr(C)]
pub struct TlbTable {
    pub entries: [TlbEntry; TLB_SLOTS],
    /// Guest-physical page address of each entry (for the run loop's block lookup).
    pub phys: [u64; TLB_SLOTS],
    /// The entry maps a global page (PTE.G under CR4.PGE): a CR3 write keeps it.
    pub global: [bool; TLB_SLOTS],
    /// The slots that took a non-global page since the last flush of them, and those
    /// that took a global page since the last full flush: between them every slot in
    /// use, so that flushes and write protection visit just those (the table is large,
    /// for few conflicts, and mostly empty).
    local: SlotLog<{ TLB_SLOTS / 8 }>,
    globals: SlotLog<{ TLB_SLOTS / 8 }>,
}

/// The slots of a direct-mapped table (the TLB, a jump-cache array) filled since its
/// last selective flush, so that the flush empties just those; after more than `CAP`
/// of them it says so, and the flush empties the whole table instead.
#[derive(Debug, Default)]
pub struct SlotLog<const CAP: usize> {
    slots: Vec<u32>,
    overflow: bool,
}

impl<const CAP: usize> SlotLog<CAP> {
    pub fn note(&mut self, slot: usize) {
        if self.slots.len() < CAP {
            self.slots.push(slot as u32);
        } else {
            self.overflow = true;
        }
    }

    /// Hands each noted slot to `f` and forgets them; false (and nothing handed) when
    /// there were more than it noted.
    pub fn drain(&mut self, mut f: impl FnMut(usize)) -> bool {
        let complete = !std::mem::take(&mut self.overflow);
        if complete {
            self.slots.iter().for_each(|&s| f(s as usize));
        }
        self.slots.clear();
        complete
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.overflow = false;
    }

    /// The noted slots, if they are all there are.
    pub fn slots(&self) -> Option<&[u32]> {
        (!self.overflow).then_some(&self.slots[..])
    }
}

impl TlbTable {
    /// Empties every slot, the whole table when the logs do not know them all.
    fn clear(&mut self) {
        let (entries, global) = (&mut self.entries, &mut self.global);
        let mut empty = |i: usize| {
            entries[i] = TlbEntry::EMPTY;
            global[i] = false;
        };
        let known = self.local.drain(&mut empty) & self.globals.drain(&mut empty);
        if !known {
            self.clear_all();
        }
    }

    fn clear_all(&mut self) {
        self.entries.fill(TlbEntry::EMPTY);
        self.global.fill(false);
        self.local.clear();
        self.globals.clear();
    }

    /// Calls `f` with every slot that may be in use: the logged ones, or all.
    fn for_each_used(&mut self, mut f: impl FnMut(&mut TlbEntry)) {
        match (self.local.slots(), self.globals.slots()) {
            (Some(a), Some(b)) => a.iter().chain(b).for_each(|&i| f(&mut self.entries[i as usize])),
            _ => self.entries.iter_mut().for_each(f),
        }
    }

    /// The slot holding `linear`'s page with a tag for `access` (`len` bytes from
    /// `linear`, all in that page).
    fn find(&self, linear: u64, len: usize, access: Access) -> Option<usize> {
        let last_page = page_tag(linear.wrapping_add(len as u64 - 1));
        Tlb::ways(linear).into_iter().find(|&i| self.entries[i].tag(access) == last_page)
    }

    /// The physical address of `linear` if its page is cached for `access`.
    pub fn lookup(&self, linear: u64, access: Access) -> Option<u64> {
        self.find(linear, 1, access).map(|i| self.phys[i] | (linear & !PAGE_MASK))
    }

    /// The physical address `linear` maps to, if its page is cached for execution.
    pub fn lookup_code(&self, linear: u64) -> Option<u64> {
        self.lookup(linear, Access::Fetch)
    }

    /// The host address of `len` (at least 1) bytes at `linear` when they lie in one
    /// page cached for `access`, by the test generated code makes: the last byte's
    /// page against the tags of the first byte's set. A write hit is never a page with
    /// translated code (see the module's note), so a store through it needs no
    /// invalidation.
    pub fn host(&self, linear: u64, len: usize, access: Access) -> Option<*mut u8> {
        self.find(linear, len, access).map(|i| linear.wrapping_add(self.entries[i].addend) as *mut u8)
    }

    /// Whether `linear`'s page is cached for execution from a global page.
    pub fn is_global_code(&self, linear: u64) -> bool {
        self.find(linear, 1, Access::Fetch).is_some_and(|i| self.global[i])
    }

    /// Logs `slot` if it comes into use for its kind of page (see the logs' note).
    fn note_use(&mut self, slot: usize, global: bool) {
        if self.entries[slot].read == INVALID || self.global[slot] != global {
            if global {
                self.globals.note(slot);
            } else {
                self.local.note(slot);
            }
        }
    }
}

/// Flushes since the run loop last looked, for its jump caches (which map guest
/// virtual RIPs, so a changed mapping may make an entry stale).
#[derive(Debug, Default)]
pub struct FlushLog {
    /// Bumped by every flush of all entries, global ones included.
    pub all: u64,
    /// Bumped by every flush of the non-global entries (a CR3 write).
    pub non_global: u64,
    /// Linear pages dropped one at a time (INVLPG), not yet seen by the run loop.
    pub pages: Vec<u64>,
    /// Any flush since the run loop's last look (the jump cache is refilled only
    /// when in sync).
    pub unseen: bool,
}

/// More single-page flushes than this between two looks count as a flush of all.
const FLUSH_LOG_PAGES: usize = 32;

/// The soft TLB: one [`TlbTable`] per MMU index.
///
/// Its vCPU's thread alone fills, flushes and probes it; other vCPUs only take write
/// permission away (a page that just got translated code, [`Tlb::protect_remote`]).
/// Both sides hold `lock` while they change entries or read the slot logs; the
/// vCPU's probes (generated code's and [`TlbTable::host`]) take no lock, as a write tag
/// removed under them at worst lets one store through that raced with the other vCPU.
#[repr(C)]
pub struct Tlb {
    pub tables: [TlbTable; MMU_MODES],
    pub log: FlushLog,
    /// A spin lock (0: free), held for microseconds at most.
    lock: AtomicU32,
}

/// Holds a TLB's lock until dropped.
struct TlbGuard<'a>(&'a AtomicU32);

impl TlbGuard<'_> {
    fn take(l: &AtomicU32) -> TlbGuard<'_> {
        while l.compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        TlbGuard(l)
    }
}

impl Drop for TlbGuard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

impl Tlb {
    /// An empty TLB on the heap (it is megabytes: never on a stack).
    pub fn boxed() -> Box<Tlb> {
        let layout = std::alloc::Layout::new::<Tlb>();
        // SAFETY: the layout is not zero-sized; the zeroed allocation is made a valid
        // TLB by init before Box owns it.
        unsafe {
            let p = std::alloc::alloc_zeroed(layout) as *mut Tlb;
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Self::init(p);
            Box::from_raw(p)
        }
    }

    /// Makes the all-zero bytes at `p` an empty TLB in place (see `CpuState::init`):
    /// zeros are empty tables already, only the logs' vectors need writing.
    ///
    /// # Safety
    /// `p` must be valid for writes and hold zeros.
    pub unsafe fn init(p: *mut Tlb) {
        // SAFETY: as the caller promised; zeros are valid but for the vectors.
        unsafe {
            (&raw mut (*p).log.pages).write(Vec::new());
            for i in 0..MMU_MODES {
                (&raw mut (*p).tables[i].local).write(SlotLog::default());
                (&raw mut (*p).tables[i].globals).write(SlotLog::default());
            }
        }
    }

    /// The two slots `linear`'s page may occupy, first way first.
    pub fn ways(linear: u64) -> [usize; 2] {
        let set = ((linear >> 12) as usize) & (TLB_ENTRIES - 1);
        [set, set + TLB_ENTRIES]
    }

    /// Drops every entry of every MMU index, global ones included (CR0.PG/WP, CR4
    /// paging bits, EFER, a memory-map switch, register loads from outside).
    pub fn flush(&mut self) {
        crate::profile::count(&crate::profile::TLB_FLUSHES);
        let _g = TlbGuard::take(&self.lock);
        self.log.all += 1;
        self.log.unseen = true;
        self.log.pages.clear();
        for t in &mut self.tables {
            t.clear();
        }
    }

    /// Drops every entry but those of global pages, in every MMU index (a CR3 write).
    pub fn flush_non_global(&mut self) {
        crate::profile::count(&crate::profile::TLB_FLUSHES);
        let _g = TlbGuard::take(&self.lock);
        self.log.non_global += 1;
        self.log.unseen = true;
        for t in &mut self.tables {
            let (entries, global) = (&mut t.entries, &t.global);
            let noted = t.local.drain(|i| {
                if !global[i] {
                    entries[i] = TlbEntry::EMPTY;
                }
            });
            if !noted {
                for (e, &g) in entries.iter_mut().zip(global) {
                    if !g {
                        *e = TlbEntry::EMPTY;
                    }
                }
            }
        }
    }

    /// Drops any entry for `linear`'s page, global or not, in every MMU index (INVLPG).
    pub fn flush_page(&mut self, linear: u64) {
        let page = linear & PAGE_MASK;
        let _g = TlbGuard::take(&self.lock);
        for t in &mut self.tables {
            for i in Self::ways(linear) {
                let e = &mut t.entries[i];
                if [e.read, e.write, e.code].contains(&page_tag(page)) {
                    *e = TlbEntry::EMPTY;
                    t.global[i] = false;
                }
            }
        }
        self.log.unseen = true;
        if self.log.pages.len() < FLUSH_LOG_PAGES {
            self.log.pages.push(page);
        } else {
            self.log.pages.clear();
            self.log.all += 1;
        }
    }

    /// Drops write permission for every entry, of any MMU index, that maps host page
    /// `host` (a page that just got translated code, seen through any linear alias).
    pub fn protect_host_page(&mut self, host_page: u64) {
        let _g = TlbGuard::take(&self.lock);
        Self::protect_locked(&mut self.tables, host_page);
    }

    /// [`Self::protect_host_page`] from another vCPU's thread.
    ///
    /// # Safety
    /// `tlb` must point to a live TLB; its own thread may be using it (it takes the
    /// lock for every change, see the type's note).
    pub unsafe fn protect_remote(tlb: *mut Tlb, host_page: u64) {
        // SAFETY: the caller keeps `tlb` alive; the lock serializes this with the owner's
        // changes, and its probes tolerate a tag going (the type's note).
        unsafe {
            let _g = TlbGuard::take(&(*tlb).lock);
            Self::protect_locked(&mut (*tlb).tables, host_page);
        }
    }

    fn protect_locked(tables: &mut [TlbTable; MMU_MODES], host_page: u64) {
        for t in tables {
            t.for_each_used(|e| {
                if e.write != INVALID && (e.write & PAGE_MASK).wrapping_add(e.addend) == host_page {
                    e.write = INVALID;
                }
            });
        }
    }

    /// Fills MMU index `idx`'s entry for `linear` after a walk (see [`fill`]), writable
    /// only if no vCPU holds translated code from the page (`own_code`: this vCPU's
    /// cache does, whatever the owner bits say since another vCPU's write cleared
    /// them); checked under the lock, so that a first claim of the page
    /// ([`crate::coherence`]) cannot miss the entry.
    pub fn fill(&mut self, idx: usize, mem: &GuestMemory, linear: u64, walk: Walk, access: Access, own_code: bool) {
        let _g = TlbGuard::take(&self.lock);
        let code_free = !own_code && mem.code_owners(walk.phys & PAGE_MASK) == 0;
        fill(&mut self.tables[idx], mem, linear, walk, access, code_free);
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

/// Fills the entry for `linear`, just walked for `access` with the rules of `tlb`'s
/// MMU index, when the page is RAM or ROM. Each tag is set only by a walk that checked
/// that kind of access: the read tag by any (x86 pages are always readable), the write
/// tag by one that found a write allowed with the dirty bit set (or set it) on a page
/// without translated code (`code_free`), the code tag by a fetch (NX).
pub fn fill(tlb: &mut TlbTable, mem: &GuestMemory, linear: u64, walk: Walk, access: Access, code_free: bool) {
    let Walk { phys, global, writable } = walk;
    let page = linear & PAGE_MASK;
    let Target::Memory { host, rom } = phys_target(mem, phys & PAGE_MASK) else { return };
    // The page must be wholly inside one region for the addend to be valid.
    if mem.host_ptr(phys & PAGE_MASK, PAGE_SIZE as usize).is_none() {
        return;
    }
    // The page's slot: where it is (a refill that adds a tag), else the first way,
    // whose page moves to the second.
    let [w0, w1] = Tlb::ways(linear);
    let tag = page_tag(page);
    let idx = if tlb.entries[w1].read == tag {
        w1
    } else {
        if ![tag, INVALID].contains(&tlb.entries[w0].read) {
            tlb.note_use(w1, tlb.global[w0]);
            tlb.entries[w1] = tlb.entries[w0];
            tlb.phys[w1] = tlb.phys[w0];
            tlb.global[w1] = tlb.global[w0];
        }
        w0
    };
    tlb.note_use(idx, global);
    let addend = (host as u64).wrapping_sub(page);
    let e = &mut tlb.entries[idx];
    if e.addend != addend || e.read != tag || tlb.global[idx] != global {
        *e = TlbEntry::EMPTY;
    }
    e.addend = addend;
    e.read = tag;
    tlb.phys[idx] = phys & PAGE_MASK;
    tlb.global[idx] = global;
    if access == Access::Fetch {
        e.code = tag;
    }
    if writable && !rom && code_free {
        e.write = tag;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_flush() {
        let mem = GuestMemory::flat(1 << 20).unwrap();
        let mut tlb = Tlb::boxed();
        let k = MMU_KERNEL;
        let walk = |phys, writable| Walk { phys, global: false, writable };
        fill(&mut tlb.tables[k], &mem, 0x5123, walk(0x5123, true), Access::Write, true);
        fill(&mut tlb.tables[k], &mem, 0x5123, walk(0x5123, false), Access::Fetch, true);
        fill(&mut tlb.tables[MMU_USER], &mem, 0x5123, walk(0x5123, true), Access::Write, true);
        let e = tlb.tables[k].entries[Tlb::ways(0x5000)[0]];
        assert_eq!((e.read, e.write, e.code), (0x5fff, 0x5fff, 0x5fff), "tags name the page's last byte");
        assert_eq!(e.addend.wrapping_add(0x5000), mem.host_ptr(0x5000, 1).unwrap() as u64);
        let host = mem.host_ptr(0x5000, 1).unwrap();
        assert_eq!(tlb.tables[k].host(0x5ff8, 8, Access::Write), Some(host.wrapping_add(0xff8)));
        // The last byte's page decides: an access crossing the page misses.
        assert_eq!(tlb.tables[k].host(0x5ff9, 8, Access::Write), None);
        assert_eq!(tlb.tables[MMU_USER].host(0x5000, 1, Access::Fetch), None, "no fetch filled it");
        tlb.protect_host_page(host as u64);
        for t in &tlb.tables {
            assert_eq!(t.entries[Tlb::ways(0x5000)[0]].write, INVALID, "every index loses the write tag");
        }
        tlb.flush_page(0x5fff);
        for t in &tlb.tables {
            assert_eq!(t.entries[Tlb::ways(0x5000)[0]], TlbEntry::EMPTY);
        }
        assert_eq!(tlb.log.pages, [0x5000]);
        // Device space is never entered.
        fill(&mut tlb.tables[k], &mem, 0x20_0000, walk(0x20_0000, true), Access::Write, true);
        assert_eq!(tlb.tables[k].entries[Tlb::ways(0x20_0000)[0]], TlbEntry::EMPTY);
    }

    #[test]
    fn cr3_flush_keeps_global_pages() {
        let mem = GuestMemory::flat(1 << 20).unwrap();
        let mut tlb = Tlb::boxed();
        let walk = |phys, global| Walk { phys, global, writable: false };
        fill(&mut tlb.tables[MMU_KERNEL], &mem, 0x5000, walk(0x5000, true), Access::Fetch, true);
        fill(&mut tlb.tables[MMU_KERNEL], &mem, 0x6000, walk(0x6000, false), Access::Fetch, true);
        fill(&mut tlb.tables[MMU_USER], &mem, 0x7000, walk(0x7000, false), Access::Read, true);
        tlb.flush_non_global();
        assert_eq!(tlb.tables[MMU_KERNEL].lookup_code(0x5010), Some(0x5010));
        assert!(tlb.tables[MMU_KERNEL].is_global_code(0x5010));
        assert_eq!(tlb.tables[MMU_KERNEL].lookup_code(0x6010), None);
        assert_eq!(tlb.tables[MMU_USER].lookup(0x7010, Access::Read), None);
        // INVLPG and a full flush drop global pages too.
        tlb.flush_page(0x5000);
        assert_eq!(tlb.tables[MMU_KERNEL].lookup_code(0x5010), None);
        fill(&mut tlb.tables[MMU_KERNEL], &mem, 0x5000, walk(0x5000, true), Access::Fetch, true);
        tlb.flush();
        assert_eq!(tlb.tables[MMU_KERNEL].lookup_code(0x5010), None);
        assert!(!tlb.tables[MMU_KERNEL].global[Tlb::ways(0x5000)[0]]);
    }

    /// Pages one table apart share a set: the second way keeps the one a fill
    /// displaces, a third page displaces the older, and flushes find both ways.
    #[test]
    fn a_set_holds_two_pages() {
        let mem = GuestMemory::flat(1 << 20).unwrap();
        let mut tlb = Tlb::boxed();
        let t = &mut tlb.tables[MMU_USER];
        let apart = (TLB_ENTRIES as u64) << 12;
        let (a, b, c) = (0x7000, 0x7000 + apart, 0x7000 + 2 * apart);
        let walk = |phys| Walk { phys, global: false, writable: false };
        fill(t, &mem, a, walk(0x1000), Access::Read, true);
        fill(t, &mem, b, walk(0x2000), Access::Read, true);
        assert_eq!((t.lookup(a + 4, Access::Read), t.lookup(b + 4, Access::Read)), (Some(0x1004), Some(0x2004)));
        fill(t, &mem, c, walk(0x3000), Access::Read, true);
        assert_eq!(t.lookup(a, Access::Read), None, "the older page goes");
        assert_eq!((t.lookup(b, Access::Read), t.lookup(c, Access::Read)), (Some(0x2000), Some(0x3000)));
        // A read's walk that found the page dirty and writable enters it for writing.
        fill(t, &mem, b, Walk { phys: 0x2000, global: false, writable: true }, Access::Read, true);
        assert_eq!(t.lookup(b, Access::Write), Some(0x2000));
        assert_eq!(t.lookup(c, Access::Write), None);
        tlb.flush_page(b);
        assert_eq!(tlb.tables[MMU_USER].lookup(b, Access::Read), None);
        assert_eq!(tlb.tables[MMU_USER].lookup(c, Access::Read), Some(0x3000));
        tlb.flush_non_global();
        assert!(tlb.tables[MMU_USER].entries.iter().all(|e| *e == TlbEntry::EMPTY), "the logs knew every slot used");
    }
}
